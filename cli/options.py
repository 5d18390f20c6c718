"""Options shared by several commands, defined once. Optional flags default to None so the
library's defaults win."""

from __future__ import annotations

import click

device = click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None,
    help="Compute device [default: auto = cuda when available, else cpu].",
)  # fmt: skip
seed = click.option("--seed", type=int, default=None, help="Random seed; the same seed gives the same result on CPU [default: 0].")
batch_size = click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Batch size.")
as_json = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")
k = click.option("-k", "k", type=int, default=10, show_default=True, help="Results per query (more than the index holds gives all of them).")
weights = click.option(
    "--weights", type=click.Path(dir_okay=False), default=None,
    help="Local backbone state dict (.safetensors, or a torch file loadable with weights_only=True).",
)  # fmt: skip
adapter = click.option(
    "--adapter", type=click.Path(file_okay=False), default=None,
    help="LoRA adapter folder made by `hashindex finetune`, put on the backbone.",
)  # fmt: skip
nprobe = click.option("--nprobe", type=click.IntRange(min=1), default=None, help="IVF lists visited per query [default: nlist/16].")


def kwargs(**options) -> dict:
    """Drop options the user left unset, so library defaults apply."""
    return {k: v for k, v in options.items() if v is not None}
rerank = click.option(
    "--rerank", type=click.IntRange(min=1), default=None,
    help="Re-rank the Hamming top R*k by float cosine against the database embeddings file (R = this value).",
)  # fmt: skip
asymmetric = click.option(
    "--asymmetric", is_flag=True,
    help="Re-rank the Hamming top R*k by the distance between the query's sigmoid(logits) and the database bits (R from --rerank, default 4).",
)  # fmt: skip
