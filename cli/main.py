"""The ``hashindex`` command line: a thin shell over the library API."""

from __future__ import annotations

import json
import logging
import os
import sys

import click

from hashindex.cli import options as opt
from hashindex.cli import scale
from hashindex.core.config import (
    BENCH_METHODS,
    BITS_RANGE,
    HASHCODER_SIZES,
    INDEX_KINDS,
    METHODS,
    RATE_WEIGHT,
    RATE_WEIGHT_SHORT,
    SHORT_CODE_BITS,
    BenchConfig,
    EmbedConfig,
    FitConfig,
    IndexConfig,
    default,
)
from hashindex.core.errors import HashIndexError, InputError
from hashindex.core.spec import DEFAULT_MODEL, INTERPOLATIONS
from hashindex.core.version import __version__


class _Group(click.Group):
    """Turns library errors into one line on stderr and an exit code, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except HashIndexError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except FileNotFoundError as e:
            click.echo(f"error: {e.filename or e}: no such file or directory", err=True)
            sys.exit(2)
        except OSError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="hashindex")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors; no progress bars.")
@click.pass_context
def cli(ctx, verbose: int, quiet: bool):
    """Image retrieval with learned binary codes.

    \b
    Pipeline:
      hashindex embed SOURCE db.h5 --views 2      frozen timm backbone -> HDF5 embeddings
      hashindex fit-probe db.h5 probe/ --bits 64  CroVCA hash probe (or a baseline)
      hashindex finetune SOURCE tuned/            or: LoRA adapters + probe trained on images
      hashindex build db.h5 probe/ index/         faiss binary index + manifest
      hashindex query index/ photo.jpg -k 10      images (or embeddings) in, ranked items out
      hashindex evaluate index/ q.h5              mAP@k against float cosine
      hashindex add index/ new_photos/            live index: add, remove, compact, info
      hashindex serve index/                      HTTP API and web page on 127.0.0.1:8000
    """
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    # -q hides chatter (progress bars, "wrote" lines, other libraries' warnings), never a
    # warning of hashindex's about the user's data.
    logging.basicConfig(
        level=logging.ERROR if quiet else level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("hashindex").setLevel(logging.WARNING if quiet else level)
    if quiet:
        import warnings

        warnings.simplefilter("ignore")
    ctx.obj = {"progress": not quiet, "quiet": quiet}


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


@cli.command()
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
@opt.batch_size
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
@scale.ray_options
@click.pass_obj
def embed(obj, source, out, split, root, data_dir, limit, restart, ray_address, ray_actors, **kw):
    """Embed the images of SOURCE into the HDF5 file OUT.

    SOURCE is a folder of images (class subfolders give labels), a list file
    (`relative/path l1 ... lC` with 0/1 labels), a folder of IDX files, or `fashion-mnist`.
    An interrupted run (even kill -9) resumes when re-run with the same arguments; a second
    run on the same OUT fails at once. Undecodable images are recorded in the file's /failures
    and skipped; more of them than --max-failures gives exit status 1.
    """
    from hashindex.embedding.run import embed as run
    from hashindex.embedding.sources import open_source

    src = open_source(source, split=split, root=root, data_dir=data_dir, limit=limit)
    runner = scale.embed_runner(ray_address, ray_actors)
    config = EmbedConfig(**opt.kwargs(**kw, commit_seconds=_commit_seconds()))
    s = run(src, out, config, progress=obj["progress"], restart=restart, runner=runner)
    if s.failures:
        click.echo(s.describe())  # failed images are news about the data: shown even with -q
    else:
        _say(obj, s.describe())


@cli.command("fit-probe")
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
@opt.batch_size
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
@click.pass_obj
def fit_probe(obj, embeddings, out, **kw):
    """Fit a hash probe on EMBEDDINGS and write it to the folder OUT.

    OUT holds weights.safetensors and probe.json (config, provenance, loss history, bit balance).
    """
    from hashindex.probe.fit import fit_probe as run
    from hashindex.store.reader import open_embeddings

    probe = run(open_embeddings(embeddings), FitConfig(**opt.kwargs(**kw)), progress=obj["progress"])
    probe.save(out)
    b = probe.meta["bit_balance"]
    _say(
        obj,
        f"wrote {out}: {probe.method} {probe.bits} bits, fitted in {probe.meta['fit_seconds']:.1f}s, bit balance {b['mean']:.3f} (min {b['min']:.3f}, max {b['max']:.3f})",
    )


@cli.command()
@click.argument("embeddings", type=click.Path(dir_okay=False))
@click.argument("probe", type=click.Path(file_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@click.option(
    "--index",
    "kind",
    type=click.Choice(INDEX_KINDS),
    default=None,
    help="flat: exact scan; ivf: inverted lists (approximate, --nlist/--nprobe); lookup: exact hash-table "
    f"lookup for codes of at most 16 bits, much faster than a scan there [default: {default(IndexConfig, 'kind')}].",
)
@click.option("--nlist", type=click.IntRange(min=1), default=None, help="IVF lists [default: about 4*sqrt(n)].")
@opt.nprobe
@click.pass_obj
def build(obj, embeddings, probe, out, **kw):
    """Encode EMBEDDINGS with PROBE and write a faiss binary index folder OUT."""
    from hashindex.index.load import build_index
    from hashindex.store.reader import open_embeddings

    idx = build_index(open_embeddings(embeddings), probe, out, IndexConfig(**opt.kwargs(**kw)))
    m = idx.manifest
    _say(obj, f"wrote {out}: {m.index.kind} index of {m.ntotal} codes, {m.bits} bits, built in {m.build_seconds:.2f}s")


def _say(obj, text: str) -> None:
    """A line of chatter: printed unless -q."""
    if not obj["quiet"]:
        click.echo(text)


def _field(text) -> str:
    """A tab-separated field: tabs, newlines and backslashes in names are escaped (\\t, \\n, \\\\)
    so every result stays one line of as many fields as the header."""
    return str(text).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


@cli.command()
@click.argument("index", type=click.Path(file_okay=False))
@click.argument("images", nargs=-1, type=click.Path(dir_okay=False))
@click.option(
    "--embeddings",
    "emb_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Query with the embeddings of this HDF5 file instead of images.",
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="With --embeddings: only the first N queries.")
@opt.k
@opt.nprobe
@opt.rerank
@opt.asymmetric
@opt.weights
@click.option(
    "--adapter",
    type=click.Path(file_okay=False),
    default=None,
    help="Where the index's LoRA adapter is now, when its recorded folder moved.",
)
@opt.device
@opt.runtime
@click.option(
    "--verify/--no-verify",
    default=True,
    show_default=True,
    help="Check the sha256 of every index file before searching (sizes are always checked); hashing a large index "
    "dominates a cold query, and --no-verify skips it.",
)
@opt.as_json
def query(
    index, images, emb_file, limit, k, nprobe, rerank, asymmetric, weights, adapter, device, runtime, verify, as_json
):
    """Search INDEX with IMAGES (embedded by the index's backbone) or --embeddings.

    Prints rank, id, name (path or split/index), label and Hamming distance per result, one
    tab-separated line each (tabs, newlines and backslashes in names escaped as \\t, \\n, \\\\;
    --json gives them as they are); equal distances are ordered by id.
    """
    from hashindex.api.query import query_embeddings_file, query_images

    if bool(images) == bool(emb_file):
        raise click.UsageError("give query IMAGES or --embeddings FILE (one of the two)")
    if emb_file:
        results = query_embeddings_file(
            index,
            emb_file,
            k,
            limit=limit,
            nprobe=nprobe,
            rerank=rerank,
            asymmetric=asymmetric,
            device=device,
            verify=verify,
        )
    else:
        results = query_images(
            index,
            list(images),
            k,
            nprobe=nprobe,
            weights=weights,
            device=device,
            rerank=rerank,
            asymmetric=asymmetric,
            adapter=adapter,
            runtime=runtime or default(EmbedConfig, "runtime"),
            verify=verify,
        )
    if as_json:
        click.echo(json.dumps(results, indent=1))
        return
    scored = bool(results) and bool(results[0]["results"]) and "score" in results[0]["results"][0]
    click.echo("query\trank\tid\tname\tlabel\tdistance" + ("\tscore" if scored else ""))
    for r in results:
        for hit in r["results"]:
            extra = f"\t{hit['score']}" if scored else ""
            click.echo(
                "\t".join(
                    _field(v) for v in (r["query"], hit["rank"], hit["id"], hit["name"], hit["label"], hit["distance"])
                )
                + extra
            )


@cli.command()
@click.argument("index", type=click.Path(file_okay=False))
@click.argument("queries", type=click.Path(dir_okay=False))
@click.option("--topk", type=int, default=1000, show_default=True, help="Ranking depth of mAP@k.")
@click.option(
    "--db-embeddings",
    type=click.Path(dir_okay=False),
    default=None,
    help="Database embeddings for the float reference [default: the file the index was built from].",
)
@click.option("--no-float", is_flag=True, help="Skip the float cosine reference.")
@opt.nprobe
@opt.rerank
@opt.asymmetric
@opt.as_json
def evaluate(index, queries, topk, db_embeddings, no_float, nprobe, rerank, asymmetric, as_json):
    """mAP@k of INDEX on the labelled QUERIES embeddings, beside float cosine kNN."""
    from hashindex.live.live_index import open_live
    from hashindex.measure.evaluate import evaluate as run
    from hashindex.store.reader import open_embeddings

    idx = open_live(index).snapshot  # added items included
    idx.index.set_nprobe(nprobe)
    db = open_embeddings(db_embeddings) if db_embeddings else None
    r = run(idx, open_embeddings(queries), topk, db=db, with_float=not no_float, rerank=rerank, asymmetric=asymmetric)
    if as_json:
        click.echo(json.dumps(r, indent=1))
        return
    name = f"{r['method']}{' supervised' if r['supervised'] else ''} {r['bits']} bits ({r['index_type']}{', ' + r['ranking'] if r['ranking'] != 'hamming' else ''})"
    click.echo(f"{'':<32}{'mAP@' + str(topk):>10}{'P@' + str(topk):>10}{'queries/s':>12}{'bytes/item':>12}")
    click.echo(
        f"{name:<32}{100 * r['map']:>10.2f}{100 * r['precision']:>10.2f}{r['search_qps']:>12,.0f}{r['code_bytes_per_item']:>12}"
    )
    if r["float_map"] is not None:
        fl = f"float cosine ({r['float_bytes_per_item'] // 4}-d)"
        click.echo(
            f"{fl:<32}{100 * r['float_map']:>10.2f}{100 * r['float_precision']:>10.2f}{r['float_qps']:>12,.0f}{r['float_bytes_per_item']:>12}"
        )
    click.echo(
        f"{'asymmetric, whole database':<32}{100 * r['asymmetric_map']:>10.2f}{100 * r['asymmetric_precision']:>10.2f}"
    )
    ranking = (
        "Hamming ranking, equal distances by id"
        if r["ranking"] == "hamming"
        else f"ranking: {r['ranking']} (Hamming top R*k re-ranked)"
    )
    click.echo(
        f"{r['nq']} queries against {r['ntotal']} items; {ranking}; the asymmetric row ranks every item by the "
        "query's sigmoid(logits) against its bits (the CroVCA paper's figure)"
    )
    if r["ivf"] is not None:
        v = r["ivf"]
        note = (
            ""
            if v["map"] is not None
            else f"; {100 * (1 - v['complete']):.1f}% of queries found fewer than k in their lists (completed by an exhaustive search), so the mAP above is not that of the IVF search alone"
        )
        click.echo(
            f"IVF nprobe {v['nprobe']}: recall of the flat top-{v['k']} {100 * v['recall']:.1f}% ({100 * v['recall_ties']:.1f}% counting equal distances){note}"
        )


def _csv(values) -> str:
    return ",".join(str(v) for v in values)


@cli.command()
@click.argument("database", type=click.Path(dir_okay=False))
@click.argument("queries", type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--out",
    type=click.Path(file_okay=False),
    required=True,
    help="Report folder (report.md, report.json, PNG plots).",
)
@click.option(
    "--methods",
    type=opt.CommaList(str, BENCH_METHODS),
    default=None,
    help=f"Comma-separated: {','.join(BENCH_METHODS)} [default: all].",
)
@click.option(
    "--bits",
    type=opt.CommaList(),
    default=None,
    help=f"Comma-separated code lengths [default: {_csv(default(BenchConfig, 'bits'))}].",
)
@click.option(
    "--topk",
    type=click.IntRange(min=1),
    default=None,
    help=f"Ranking depth of mAP@k [default: {default(BenchConfig, 'topk')}].",
)
@click.option(
    "--rerank",
    type=click.IntRange(min=1),
    default=None,
    help=f"Candidates R·k for the re-ranking modes [default: {default(BenchConfig, 'rerank')}].",
)
@click.option(
    "--epochs", type=click.IntRange(min=1), default=None, help="CroVCA epochs [default: automatic, as in fit-probe]."
)
@click.option(
    "--seeds",
    type=opt.CommaList(),
    default=None,
    help="Also fit the learned methods (crovca, crovca-sup) at these seeds, e.g. 0,1,2,3,4: the report gives "
    "mean, minimum and standard deviation beside the --seed figure, and its quality targets use the minimum.",
)
@opt.targets
@click.option(
    "--hashcoder",
    type=click.Choice(HASHCODER_SIZES),
    default=None,
    help=f"CroVCA MLP size [default: {default(BenchConfig, 'hashcoder')}].",
)
@click.option(
    "--nprobes",
    type=opt.CommaList(),
    default=None,
    help=f"IVF nprobe values to time [default: {_csv(default(BenchConfig, 'nprobes'))}].",
)
@click.option(
    "--scales",
    type=opt.CommaList(),
    default=None,
    help=f"Synthetic collection sizes for speed, e.g. 1000000,10000000 [default: {_csv(default(BenchConfig, 'scales'))}].",
)
@click.option(
    "--synthetic-ivf",
    "ivf_nlist",
    type=click.IntRange(min=0),
    default=None,
    help="Also time an IVF index with this many lists on each synthetic collection, at the nprobe whose recall@k against flat reaches 0.95 (the sweep is reported); 2048 suits 100M codes [default: 0, none: training takes minutes at these scales].",
)
@click.option(
    "--float-scale",
    type=click.IntRange(min=0),
    default=None,
    help=f"Largest synthetic size that also times float IndexFlatIP and re-ranking [default: {default(BenchConfig, 'float_scale')}].",
)
@click.option(
    "--speed-queries",
    type=click.IntRange(min=1),
    default=None,
    help=f"Queries per throughput measurement [default: {default(BenchConfig, 'speed_queries')}].",
)
@click.option(
    "--latency-queries",
    type=click.IntRange(min=1),
    default=None,
    help=f"Single-query calls per latency measurement [default: {default(BenchConfig, 'latency_queries')}; at most 100 on synthetic data].",
)
@click.option(
    "--images",
    type=str,
    default=None,
    help="Image source (as embed takes it: a folder, fashion-mnist, an IDX folder, a list file) for the pipeline-speed "
    "section: its first --images-limit images are embedded with the database's backbone and views, beside a bare "
    "forward loop [default: none; the embedding figures say not measured].",
)
@click.option(
    "--images-limit",
    type=click.IntRange(min=1),
    default=None,
    help=f"Images of --images to embed [default: {default(BenchConfig, 'images_limit')}].",
)
@opt.device
@opt.seed
@click.pass_obj
def bench(obj, database, queries, out, **kw):
    """Quality, speed and memory of every method and index on DATABASE and QUERIES embeddings.

    Fits each method at each code length, measures mAP@k / precision@k / precision within
    Hamming radius 2 / PR curves (Hamming ranking, float re-rank, asymmetric re-rank) against
    float cosine, times flat, IVF and lookup indexes and float IndexFlatIP side by side (also on
    synthetic collections), times embed (with --images), fit-probe and one query process beside
    bare reference loops, and writes report.md, report.json and plots into OUT.
    """
    import shlex

    from hashindex.measure.bench import run_bench
    from hashindex.store.reader import open_embeddings

    cmd = "hashindex " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    r = run_bench(
        open_embeddings(database),
        open_embeddings(queries),
        out,
        BenchConfig(**opt.kwargs(**kw)),
        progress=obj["progress"],
        command=cmd,
    )
    met = [t for t in r["targets"] if t["met"] is not None]
    click.echo(
        f"wrote {out}/report.md, report.json and plots; targets met: {sum(t['met'] for t in met)} of {len(met)} measured"
    )


cli.add_command(scale.import_cmd)

from hashindex.cli.finetune import register as _register_finetune  # noqa: E402 - it reuses embed's options

_register_finetune(cli)

from hashindex.cli.live import COMMANDS as _LIVE_COMMANDS  # noqa: E402 - registered on the group defined above

for _command in _LIVE_COMMANDS:
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="hashindex")


if __name__ == "__main__":
    main()
