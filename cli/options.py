"""Options shared by several commands, defined once, with choices and defaults taken from the
library's config dataclasses and Literals (one source of truth). Optional flags default to None
so the library's defaults win."""

from __future__ import annotations

import click

from hashindex.core.config import DEFAULT_RERANK, DEVICES, RUNTIMES, TARGETS, EmbedConfig, FitConfig, default


class CommaList(click.ParamType):
    """A comma-separated list: ``16,32,64``; each element converted by ``convert_one``, and
    checked against ``choices`` when given."""

    name = "list"

    def __init__(self, kind: type = int, choices: tuple[str, ...] | None = None):
        self.kind, self.choices = kind, choices

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        out = []
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                v = self.kind(part)
            except ValueError:
                self.fail(f"expected comma-separated {self.kind.__name__}s, got {value!r}", param, ctx)
            if self.choices is not None and v not in self.choices:
                self.fail(f"{v!r} is not one of {', '.join(self.choices)}", param, ctx)
            out.append(v)
        if not out:
            self.fail(f"expected a comma-separated list, got {value!r}", param, ctx)
        return tuple(out)


def kwargs(**options) -> dict:
    """Drop options the user left unset, so library defaults apply."""
    return {k: v for k, v in options.items() if v is not None}


device = click.option(
    "--device",
    type=click.Choice(DEVICES),
    default=None,
    help=f"Compute device: auto = cuda when available, else cpu [default: {default(FitConfig, 'device')}].",
)
runtime = click.option(
    "--runtime",
    type=click.Choice(RUNTIMES),
    default=None,
    help="What runs the backbone on the CPU: onnx = its ONNX export under ONNX Runtime (about 2x torch's speed; "
    "exported once into ~/.cache/hashindex or $HASHINDEX_CACHE, checked against torch), torch = torch itself; "
    f"auto = onnx on the CPU when ONNX Runtime is installed, torch on a GPU [default: {default(EmbedConfig, 'runtime')}].",
)
seed = click.option(
    "--seed",
    type=int,
    default=None,
    help=f"Random seed; the same seed gives the same result on CPU [default: {default(FitConfig, 'seed')}].",
)
batch_size = click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help=f"Batch size [default: {default(EmbedConfig, 'batch_size')} for embed, {default(FitConfig, 'batch_size')} for fit-probe].",
)
as_json = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")
k = click.option(
    "-k",
    "k",
    type=int,
    default=10,
    show_default=True,
    help="Results per query (more than the index holds gives all of them).",
)
weights = click.option(
    "--weights",
    type=click.Path(dir_okay=False),
    default=None,
    help="Local backbone state dict (.safetensors, or a torch file loadable with weights_only=True).",
)
adapter = click.option(
    "--adapter",
    type=click.Path(file_okay=False),
    default=None,
    help="LoRA adapter folder made by `hashindex finetune`, put on the backbone.",
)
nprobe = click.option(
    "--nprobe", type=int, default=None, help="IVF lists visited per query, 1..nlist [default: nlist/16]."
)
rerank = click.option(
    "--rerank",
    type=int,
    default=None,
    help="Re-rank the Hamming top R*k by float cosine against the database embeddings file (R = this value).",
)
asymmetric = click.option(
    "--asymmetric",
    is_flag=True,
    help=f"Re-rank the Hamming top R*k by the distance between the query's sigmoid(logits) and the database bits (R from --rerank, default {DEFAULT_RERANK}).",
)
targets = click.option(
    "--targets",
    type=click.Choice(TARGETS),
    default=None,
    help="Supervised CroVCA targets. codebook: each class a fixed code, the codes at least bits/2 apart where "
    "possible, so two classes never share a code; prototype: the paper's sign of the class prototypes "
    f"(two classes can merge) [default: {default(FitConfig, 'targets')}].",
)
