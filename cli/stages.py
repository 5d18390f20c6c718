"""Commands of the pipeline's stages: embed, fit-probe, build (and import, finetune: see their
modules). Each parses its options, calls one function of the public API, and reports."""

from __future__ import annotations

import os

import click

from hashindex.cli import options as opt
from hashindex.cli import scale
from hashindex.core.config import (
    BITS_RANGE,
    HASHCODER_SIZES,
    INDEX_KINDS,
    METHODS,
    RATE_WEIGHT,
    RATE_WEIGHT_SHORT,
    SHORT_CODE_BITS,
    EmbedConfig,
    FitConfig,
    IndexConfig,
    default,
)
from hashindex.core.errors import InputError
from hashindex.core.spec import DEFAULT_MODEL, INTERPOLATIONS


def _commit_seconds() -> float | None:
    """``HASHINDEX_COMMIT_SECONDS``: how often embed makes progress durable (read here, at the
    boundary, so the library only sees EmbedConfig.commit_seconds)."""
    env = os.environ.get("HASHINDEX_COMMIT_SECONDS")
    if not env:
        return None
    try:
        return float(env)
    except ValueError:
        raise InputError(f"HASHINDEX_COMMIT_SECONDS must be a number of seconds, got {env!r}") from None


@click.command()
@click.argument("source")
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--split", default="train", show_default=True, help="Split of IDX data / fashion-mnist: train or test.")
@click.option(
    "--root",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder the paths of a list file are relative to [default: the list file's folder].",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where the Fashion-MNIST IDX files are [default: /usr/share/datasets/fashion-mnist].",
)
@click.option("--model", default=None, help=f"timm model name [default: {DEFAULT_MODEL}].")
@opt.weights
@click.option("--pretrained", is_flag=True, default=None, help="Download timm's pretrained weights (needs internet).")
@click.option(
    "--views",
    type=click.IntRange(min=0),
    default=None,
    help=f"Augmented views cached per image (CroVCA needs >= 1; 2 is the protocol) [default: {default(EmbedConfig, 'views')}].",
)
@click.option(
    "--image-size", type=click.IntRange(min=16), default=None, help="Input resolution [default: the model's]."
)
@click.option(
    "--crop-pct",
    type=click.FloatRange(0.1, 1.0),
    default=None,
    help="Fraction of the square image kept by the centre crop; 1 resizes the whole image [default: the model's, 0.875].",
)
@click.option(
    "--interpolation",
    type=click.Choice(INTERPOLATIONS),
    default=None,
    help="Resize filter [default: the model's, bicubic for most]. bilinear suits small images "
    "upsampled several times, such as Fashion-MNIST's 28 px to 112 px.",
)
@opt.batch_size(default(EmbedConfig, "batch_size"))
@opt.max_memory
@opt.device
@opt.runtime
@click.option(
    "--jpeg-draft/--no-jpeg-draft",
    default=None,
    help="Decode JPEGs at the smallest DCT scale (1/2, 1/4, 1/8) that still covers the base image: several times "
    f"faster for photos much larger than --image-size [default: {'on' if default(EmbedConfig, 'jpeg_draft') else 'off'}].",
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N images.")
@opt.seed
@click.option(
    "--workers",
    "num_workers",
    type=click.IntRange(min=0),
    default=None,
    help="Image decoding processes [default: chosen by source].",
)
@opt.adapter
@click.option(
    "--max-failures",
    type=click.FloatRange(min=0),
    default=None,
    help="Undecodable images allowed before the exit status is 1: a count (10) or a fraction of the images "
    f"(0.01). The file is written either way, with the failures listed in /failures [default: {default(EmbedConfig, 'max_failures')}].",
)
@click.option(
    "--restart",
    is_flag=True,
    help="Discard the progress of an interrupted run of OUT instead of resuming it (needed when the source changed since).",
)
@opt.metadata
@scale.ray_options
@click.pass_obj
def embed(obj, source, out, split, root, data_dir, limit, restart, metadata, ray_address, ray_actors, **kw):
    """Embed the images of SOURCE into the HDF5 file OUT.

    SOURCE is a folder of images (class subfolders give labels), a list file
    (`relative/path l1 ... lC` with 0/1 labels), a folder of IDX files, or `fashion-mnist`.
    An interrupted run (even kill -9) resumes when re-run with the same arguments; a second
    run on the same OUT fails at once. Undecodable images are recorded in the file's /failures
    and skipped; more of them than --max-failures gives exit status 1.
    """
    import hashindex

    config = EmbedConfig(**opt.kwargs(**kw, commit_seconds=_commit_seconds()))
    s = hashindex.embed(
        source,
        out,
        config,
        split=split,
        root=root,
        data_dir=data_dir,
        limit=limit,
        progress=obj["progress"],
        restart=restart,
        runner=scale.embed_runner(ray_address, ray_actors),
        metadata=metadata,
    )
    if s.failures:
        click.echo(s.describe())  # failed images are news about the data: shown even with -q
    else:
        opt.say(obj, s.describe())


@click.command("fit-probe")
@click.argument("embeddings", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@click.option(
    "--bits", type=int, default=None, help=f"Code length, {BITS_RANGE} [default: {default(FitConfig, 'bits')}]."
)
@click.option(
    "--method",
    type=click.Choice(METHODS),
    default=None,
    help=f"Hashing method [default: {default(FitConfig, 'method')}].",
)
@click.option(
    "--supervised", is_flag=True, default=None, help="CroVCA with class targets from the file's labels (see --targets)."
)
@click.option(
    "--hashcoder",
    type=click.Choice(HASHCODER_SIZES),
    default=None,
    help=f"CroVCA MLP size [default: {default(FitConfig, 'hashcoder')}].",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=None,
    help="Training epochs, an explicit override [default: automatic: 5, or more so that training takes at least --min-steps optimiser steps].",
)
@click.option(
    "--min-steps",
    type=click.IntRange(min=0),
    default=None,
    help=f"Floor on optimiser steps when --epochs is not given [default: {default(FitConfig, 'min_steps')}].",
)
@opt.targets
@opt.batch_size(default(FitConfig, "batch_size"), "samples")
@click.option(
    "--lr",
    type=float,
    default=None,
    help=f"AdamW peak learning rate, cosine-decayed per step [default: {default(FitConfig, 'lr'):g}].",
)
@click.option(
    "--weight-decay",
    type=float,
    default=None,
    help=f"AdamW weight decay [default: {default(FitConfig, 'weight_decay'):g}].",
)
@click.option(
    "--eps", type=float, default=None, help=f"Coding-rate distortion epsilon [default: {default(FitConfig, 'eps'):g}]."
)
@click.option(
    "--reg",
    type=float,
    default=None,
    help=f"Weight of the coding-rate regulariser [default: {RATE_WEIGHT_SHORT:g} for codes of at most {SHORT_CODE_BITS} bits, {RATE_WEIGHT:g} for longer ones].",
)
@click.option(
    "--eval-view/--no-eval-view",
    default=None,
    help="CroVCA also draws the eval embedding (the un-augmented image) as one of a sample's two views "
    "[default: on; --no-eval-view trains on the cached augmented views only].",
)
@click.option(
    "--sample",
    type=click.IntRange(min=2),
    default=None,
    help=f"Fit on a uniform sample of this many rows, streamed from the file [default: {default(FitConfig, 'sample')}].",
)
@opt.device
@opt.seed
@opt.verify
@click.pass_obj
def fit_probe(obj, embeddings, out, verify, **kw):
    """Fit a hash probe on EMBEDDINGS and write it to the folder OUT.

    OUT holds weights.safetensors and probe.json (config, provenance, loss history, bit balance).
    """
    import hashindex

    probe = hashindex.fit_probe(embeddings, out, FitConfig(**opt.kwargs(**kw)), verify=verify, progress=obj["progress"])
    b = probe.meta["bit_balance"]
    opt.say(
        obj,
        f"wrote {out}: {probe.method} {probe.bits} bits, fitted in {probe.meta['fit_seconds']:.1f}s, "
        f"bit balance {b['mean']:.3f} (min {b['min']:.3f}, max {b['max']:.3f})",
    )


INDEX_HELP = (
    "auto: chosen by measuring this collection (lookup up to 16 bits; else mih or flat, whichever answers a "
    "sample of its own codes faster; the choice and why are recorded, `info` shows them); flat: exact scan; "
    "mih: exact multi-index hashing, faster than a scan when neighbours are close; lookup: exact table for "
    "codes of at most 16 bits; ivf: inverted lists (approximate, --nlist/--nprobe)"
)


def index_options(f):
    """``--index``, its parameters, and the automatic choice's options (build and index)."""
    for decorator in reversed(
        [
            click.option(
                "--index",
                "kind",
                type=click.Choice(INDEX_KINDS),
                default=None,
                help=f"{INDEX_HELP} [default: {default(IndexConfig, 'kind')}].",
            ),
            click.option(
                "--nlist", type=click.IntRange(min=1), default=None, help="IVF lists [default: about 4*sqrt(n)]."
            ),
            opt.nprobe,
            click.option(
                "--tables",
                type=click.IntRange(min=1),
                default=None,
                help="mih: substrings (hash tables) [default: ceil(bits / log2 n)].",
            ),
            click.option("--approximate", is_flag=True, default=None, help="auto: allow an approximate index (IVF)."),
            click.option(
                "--latency-ms",
                type=click.FloatRange(min=0, min_open=True),
                default=None,
                help="auto: use IVF when no exact kind answers one query (k=100) within this many milliseconds.",
            ),
        ]
    ):
        f = decorator(f)
    return f


@click.command()
@click.argument("embeddings", type=click.Path(dir_okay=False))
@click.argument("probe", type=click.Path(file_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@index_options
@opt.metadata
@opt.verify
@click.pass_obj
def build(obj, embeddings, probe, out, metadata, verify, **kw):
    """Encode EMBEDDINGS with PROBE and write an index folder OUT."""
    import hashindex

    ix = hashindex.build_index(
        embeddings, probe, out, IndexConfig(**opt.kwargs(**kw)), verify=verify, metadata=metadata
    )
    m = ix.live.manifest
    why = f" ({m.index.reason})" if m.index.reason else ""
    opt.say(
        obj,
        f"wrote {out}: {m.index.kind} index of {m.ntotal} codes, {m.bits} bits, built in {m.build_seconds:.2f}s{why}",
    )


COMMANDS = (embed, fit_probe, build)
