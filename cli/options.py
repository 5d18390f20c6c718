"""Options shared by several commands, defined once, with choices and defaults taken from the
library's config dataclasses and Literals (one source of truth), and the small output helpers
every command uses. Optional flags default to None so the library's defaults win."""

from __future__ import annotations

import click

from hashindex.core.config import DEFAULT_RERANK, DEVICES, RUNTIMES, TARGETS, FitConfig, default


class CommaList(click.ParamType):
    """A comma-separated list: ``16,32,64``; each element converted by ``kind``, and checked
    against ``choices`` when given."""

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


def say(obj, text: str, err: bool = False) -> None:
    """A line of chatter: printed unless -q (``err``: on stderr, where results go to stdout)."""
    if not obj["quiet"]:
        click.echo(text, err=err)


def tsv_field(text) -> str:
    """A tab-separated field: tabs, newlines and backslashes in names are escaped (\\t, \\n, \\\\)
    so every result stays one line of as many fields as the header."""
    return str(text).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


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
    "auto = onnx on the CPU when ONNX Runtime is installed, torch on a GPU [default: auto].",
)
seed = click.option(
    "--seed",
    type=int,
    default=None,
    help=f"Random seed; the same seed gives the same result on CPU [default: {default(FitConfig, 'seed')}].",
)


def batch_size(default_value, what: str = "images"):
    """``--batch-size`` with this command's own default (None: sized from --max-memory)."""
    shown = "as many as fit --max-memory" if default_value is None else default_value
    return click.option(
        "--batch-size",
        type=click.IntRange(min=1),
        default=None,
        help=f"{what.capitalize()} per batch [default: {shown}].",
    )


class MemorySize(click.ParamType):
    """A size in bytes: ``2G``, ``512M``, ``1.5GiB`` or a plain number of bytes."""

    name = "size"
    UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        text = str(value).strip().upper().removesuffix("B").removesuffix("I")
        number = text.rstrip("KMGT")
        try:
            size = int(float(number) * self.UNITS[text[len(number) :]])
        except (ValueError, KeyError):
            self.fail(f"expected a size such as 2G, 512M or a number of bytes, got {value!r}", param, ctx)
        if size <= 0:
            self.fail(f"a size must be positive, got {value!r}", param, ctx)
        return size


max_memory = click.option(
    "--max-memory",
    type=MemorySize(),
    default=None,
    help="Memory the process may use; batches are sized to stay within it: 2G, 512M... [default: 2G].",
)


as_json = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")


def k_option(default_value: int, help_text: str):
    """``-k``/``--topk``: one name for the number of results in every command."""
    return click.option(
        "-k", "--topk", "k", type=click.IntRange(min=1), default=default_value, show_default=True, help=help_text
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
    help="Re-rank the Hamming top R*k by the distance between the query's sigmoid(logits) and the database bits "
    f"(R from --rerank, default {DEFAULT_RERANK}).",
)
targets = click.option(
    "--targets",
    type=click.Choice(TARGETS),
    default=None,
    help="Supervised CroVCA targets. codebook: each class a fixed code, the codes at least bits/2 apart where "
    "possible, so two classes never share a code; prototype: the paper's sign of the class prototypes "
    f"(two classes can merge) [default: {default(FitConfig, 'targets')}].",
)
verify = click.option(
    "--verify/--no-verify",
    default=True,
    show_default=True,
    help="Check every input file against its recorded sha256 first (a changed file is refused with exit 3); "
    "hashing large files takes time, and --no-verify skips it (sizes are still checked).",
)
images_root = click.option(
    "--images-root",
    type=click.Path(file_okay=False),
    default=None,
    help="Where the images of the index's source are now, when they moved since it was embedded.",
)
metadata = click.option(
    "--metadata",
    type=click.Path(dir_okay=False),
    default=None,
    help="Item metadata: a CSV (with a header), JSON Lines or parquet file with a 'name' column matching the "
    "items' names; every other column becomes a field filters can use (query --where year>=2010).",
)
where = click.option(
    "--where",
    multiple=True,
    help="Only items that satisfy this (repeatable; all must hold): label=Trouser, label=Trouser,Dress (any of), "
    "label!=Bag, FIELD>=NUMBER, FIELD<NUMBER, FIELD=LOW..HIGH for metadata fields. Exact: the k nearest "
    "items that satisfy it.",
)
ids_file = click.option(
    "--ids",
    "ids_file",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Only among the item ids listed in this file (one per line, or comma-separated).",
)


def read_ids(path: str | None):
    """The ids listed in a file (one per line or comma-separated; # starts a comment)."""
    if path is None:
        return None
    out = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            for part in line.split("#")[0].replace(",", " ").split():
                if not part.isascii() or not part.isdigit():
                    raise click.BadParameter(f"{path}:{lineno}: {part!r} is not an id", param_hint="--ids")
                out.append(int(part))
    return out
