"""The ``hashindex`` command line: a thin shell over the library API."""

from __future__ import annotations

import json
import logging
import sys

import click

from hashindex import __version__
from hashindex.errors import HashIndexError

from . import options as opt


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
      hashindex build db.h5 probe/ index/         faiss binary index + manifest
      hashindex query index/ photo.jpg -k 10      images (or embeddings) in, ranked items out
      hashindex evaluate index/ q.h5              mAP@k against float cosine
      hashindex add index/ new_photos/            live index: add, remove, compact, info
      hashindex serve index/                      HTTP API and web page on 127.0.0.1:8000
    """
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    ctx.obj = {"progress": not quiet}


@cli.command()
@click.argument("source")
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--split", default="train", show_default=True, help="Split of IDX data / fashion-mnist: train or test.")
@click.option("--root", type=click.Path(file_okay=False), default=None, help="Folder the paths of a list file are relative to [default: the list file's folder].")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Where the Fashion-MNIST IDX files are [default: /usr/share/datasets/fashion-mnist].")
@click.option("--model", default=None, help="timm model name [default: tf_efficientnet_lite0].")
@opt.weights
@click.option("--pretrained", is_flag=True, default=None, help="Download timm's pretrained weights (needs internet).")
@click.option("--views", type=click.IntRange(min=0), default=None, help="Augmented views cached per image (CroVCA needs >= 1; 2 is the protocol) [default: 0].")
@click.option("--image-size", type=click.IntRange(min=16), default=None, help="Input resolution [default: the model's].")
@click.option("--crop-pct", type=click.FloatRange(0.1, 1.0), default=None, help="Fraction of the square image kept by the centre crop; 1 resizes the whole image [default: the model's, 0.875].")
@click.option(
    "--interpolation", type=click.Choice(("bicubic", "bilinear", "nearest")), default=None,
    help="Resize filter [default: the model's, bicubic for most]. bilinear suits small images "
    "upsampled several times, such as Fashion-MNIST's 28 px to 112 px.",
)  # fmt: skip
@opt.batch_size
@opt.device
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N images.")
@opt.seed
@click.option("--workers", "num_workers", type=click.IntRange(min=0), default=None, help="Image decoding processes [default: chosen by source].")
@click.option(
    "--max-failures", type=click.FloatRange(min=0), default=None,
    help="Undecodable images allowed before the exit status is 1: a count (10) or a fraction of the images "
    "(0.01). The file is written either way, with the failures listed in /failures [default: 0].",
)  # fmt: skip
@click.pass_obj
def embed(obj, source, out, split, root, data_dir, limit, **kw):
    """Embed the images of SOURCE into the HDF5 file OUT.

    SOURCE is a folder of images (class subfolders give labels), a list file
    (`relative/path l1 ... lC` with 0/1 labels), a folder of IDX files, or `fashion-mnist`.
    An interrupted run (even kill -9) resumes when re-run with the same arguments; a second
    run on the same OUT fails at once. Undecodable images are recorded in the file's /failures
    and skipped; more of them than --max-failures gives exit status 1.
    """
    from hashindex.embed import EmbedConfig, embed as run
    from hashindex.sources import open_source

    src = open_source(source, split=split, root=root, data_dir=data_dir, limit=limit)
    s = run(src, out, EmbedConfig(**opt.kwargs(**kw)), progress=obj["progress"])
    click.echo(s.describe())


@cli.command("fit-probe")
@click.argument("embeddings", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--bits", type=int, default=None, help="Code length, a multiple of 8 in 16..1024 [default: 64].")
@click.option("--method", type=click.Choice(["crovca", "lsh", "pca", "pca-rr", "itq"]), default=None, help="Hashing method [default: crovca].")
@click.option("--supervised", is_flag=True, default=None, help="CroVCA with class-prototype targets from the file's labels.")
@click.option("--hashcoder", type=click.Choice(["small", "large"]), default=None, help="CroVCA MLP size [default: small].")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Training epochs [default: 5].")
@opt.batch_size
@click.option("--lr", type=float, default=None, help="AdamW peak learning rate, cosine-decayed per step [default: 1e-3].")
@click.option("--weight-decay", type=float, default=None, help="AdamW weight decay [default: 1e-2].")
@click.option("--eps", type=float, default=None, help="Coding-rate distortion epsilon [default: 0.05].")
@click.option("--reg", type=float, default=None, help="Weight of the coding-rate regulariser [default: 0.1].")
@click.option(
    "--eval-view/--no-eval-view", default=None,
    help="CroVCA also draws the eval embedding (the un-augmented image) as one of a sample's two views "
    "[default: on; --no-eval-view trains on the cached augmented views only].",
)  # fmt: skip
@opt.device
@opt.seed
@click.pass_obj
def fit_probe(obj, embeddings, out, **kw):
    """Fit a hash probe on EMBEDDINGS and write it to the folder OUT.

    OUT holds weights.safetensors and probe.json (config, provenance, loss history, bit balance).
    """
    from hashindex.probe.fit import FitConfig, fit_probe as run
    from hashindex.store import open_embeddings

    if kw.get("bits") is not None:
        from hashindex.codes import check_bits

        check_bits(kw["bits"])
        if kw["bits"] < 16:
            raise click.BadParameter("must be at least 16", param_hint="--bits")
    probe = run(open_embeddings(embeddings), FitConfig(**opt.kwargs(**kw)), progress=obj["progress"])
    probe.save(out)
    b = probe.meta["bit_balance"]
    click.echo(f"wrote {out}: {probe.method} {probe.bits} bits, fitted in {probe.meta['fit_seconds']:.1f}s, bit balance {b['mean']:.3f} (min {b['min']:.3f}, max {b['max']:.3f})")


@cli.command()
@click.argument("embeddings", type=click.Path(dir_okay=False))
@click.argument("probe", type=click.Path(file_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@click.option(
    "--index", "kind", type=click.Choice(["flat", "ivf", "lookup"]), default=None,
    help="flat: exact scan; ivf: inverted lists (approximate, --nlist/--nprobe); lookup: exact hash-table "
    "lookup for codes of at most 16 bits, much faster than a scan there [default: flat].",
)  # fmt: skip
@click.option("--nlist", type=click.IntRange(min=1), default=None, help="IVF lists [default: about 4*sqrt(n)].")
@opt.nprobe
def build(embeddings, probe, out, **kw):
    """Encode EMBEDDINGS with PROBE and write a faiss binary index folder OUT."""
    from hashindex.index import IndexConfig, build_index
    from hashindex.store import open_embeddings

    idx = build_index(open_embeddings(embeddings), probe, out, IndexConfig(**opt.kwargs(**kw)))
    m = idx.manifest
    click.echo(f"wrote {out}: {m['index']['kind']} index of {m['ntotal']} codes, {m['bits']} bits, built in {m['build_seconds']:.2f}s")


@cli.command()
@click.argument("index", type=click.Path(file_okay=False))
@click.argument("images", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--embeddings", "emb_file", type=click.Path(dir_okay=False), default=None, help="Query with the embeddings of this HDF5 file instead of images.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="With --embeddings: only the first N queries.")
@opt.k
@opt.nprobe
@opt.rerank
@opt.asymmetric
@opt.weights
@opt.device
@opt.as_json
def query(index, images, emb_file, limit, k, nprobe, rerank, asymmetric, weights, device, as_json):
    """Search INDEX with IMAGES (embedded by the index's backbone) or --embeddings.

    Prints rank, id, name (path or split/index), label and Hamming distance per result;
    equal distances are ordered by id.
    """
    from hashindex.query import query_embeddings_file, query_images

    if bool(images) == bool(emb_file):
        raise click.UsageError("give query IMAGES or --embeddings FILE (one of the two)")
    if emb_file:
        results = query_embeddings_file(index, emb_file, k, limit=limit, nprobe=nprobe, rerank=rerank, asymmetric=asymmetric)
    else:
        results = query_images(index, list(images), k, nprobe=nprobe, weights=weights, device=device, rerank=rerank, asymmetric=asymmetric)
    if as_json:
        click.echo(json.dumps(results, indent=1))
        return
    scored = bool(results) and bool(results[0]["results"]) and "score" in results[0]["results"][0]
    click.echo("query\trank\tid\tname\tlabel\tdistance" + ("\tscore" if scored else ""))
    for r in results:
        for hit in r["results"]:
            extra = f"\t{hit['score']}" if scored else ""
            click.echo(f"{r['query']}\t{hit['rank']}\t{hit['id']}\t{hit['name']}\t{hit['label']}\t{hit['distance']}{extra}")


@cli.command()
@click.argument("index", type=click.Path(file_okay=False))
@click.argument("queries", type=click.Path(dir_okay=False))
@click.option("--topk", type=int, default=1000, show_default=True, help="Ranking depth of mAP@k.")
@click.option("--db-embeddings", type=click.Path(dir_okay=False), default=None, help="Database embeddings for the float reference [default: the file the index was built from].")
@click.option("--no-float", is_flag=True, help="Skip the float cosine reference.")
@opt.nprobe
@opt.rerank
@opt.asymmetric
@opt.as_json
def evaluate(index, queries, topk, db_embeddings, no_float, nprobe, rerank, asymmetric, as_json):
    """mAP@k of INDEX on the labelled QUERIES embeddings, beside float cosine kNN."""
    from hashindex.evaluate import evaluate as run
    from hashindex.live import open_live
    from hashindex.store import open_embeddings

    idx = open_live(index).snapshot  # added items included
    idx.index.set_nprobe(nprobe)
    db = open_embeddings(db_embeddings) if db_embeddings else None
    r = run(idx, open_embeddings(queries), topk, db=db, with_float=not no_float, rerank=rerank, asymmetric=asymmetric)
    if as_json:
        click.echo(json.dumps(r, indent=1))
        return
    name = f"{r['method']}{' supervised' if r['supervised'] else ''} {r['bits']} bits ({r['index_type']}{', ' + r['ranking'] if r['ranking'] != 'hamming' else ''})"
    click.echo(f"{'':<32}{'mAP@' + str(topk):>10}{'P@' + str(topk):>10}{'queries/s':>12}{'bytes/item':>12}")
    click.echo(f"{name:<32}{100 * r['map']:>10.2f}{100 * r['precision']:>10.2f}{r['search_qps']:>12,.0f}{r['code_bytes_per_item']:>12}")
    if r["float_map"] is not None:
        fl = f"float cosine ({r['float_bytes_per_item'] // 4}-d)"
        click.echo(f"{fl:<32}{100 * r['float_map']:>10.2f}{100 * r['float_precision']:>10.2f}{r['float_qps']:>12,.0f}{r['float_bytes_per_item']:>12}")
    click.echo(f"{r['nq']} queries against {r['ntotal']} items; Hamming ranking, equal distances by id")


def _int_list(ctx, param, value):
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None


@cli.command()
@click.argument("database", type=click.Path(dir_okay=False))
@click.argument("queries", type=click.Path(dir_okay=False))
@click.option("-o", "--out", type=click.Path(file_okay=False), required=True, help="Report folder (report.md, report.json, PNG plots).")
@click.option("--methods", default=None, help="Comma-separated: crovca,crovca-sup,lsh,pca,pca-rr,itq [default: all].")
@click.option("--bits", callback=_int_list, default=None, help="Comma-separated code lengths [default: 16,32,64,128].")
@click.option("--topk", type=click.IntRange(min=1), default=None, help="Ranking depth of mAP@k [default: 1000].")
@click.option("--rerank", type=click.IntRange(min=1), default=None, help="Candidates R·k for the re-ranking modes [default: 4].")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="CroVCA epochs [default: 5].")
@click.option("--hashcoder", type=click.Choice(["small", "large"]), default=None, help="CroVCA MLP size [default: small].")
@click.option("--nprobes", callback=_int_list, default=None, help="IVF nprobe values to time [default: 1,4,16].")
@click.option("--scales", callback=_int_list, default=None, help="Synthetic collection sizes for speed, e.g. 1000000,10000000 [default: 1000000].")
@click.option("--float-scale", type=click.IntRange(min=0), default=None, help="Largest synthetic size that also times float IndexFlatIP and re-ranking [default: 1000000].")
@click.option("--speed-queries", type=click.IntRange(min=1), default=None, help="Queries per throughput measurement [default: 1000].")
@click.option("--latency-queries", type=click.IntRange(min=1), default=None, help="Single-query calls per latency measurement [default: 200; at most 100 on synthetic data].")
@opt.device
@opt.seed
@click.pass_obj
def bench(obj, database, queries, out, methods, **kw):
    """Quality, speed and memory of every method and index on DATABASE and QUERIES embeddings.

    Fits each method at each code length, measures mAP@k / precision@k / precision within
    Hamming radius 2 / PR curves (Hamming ranking, float re-rank, asymmetric re-rank) against
    float cosine, times flat, IVF and lookup indexes and float IndexFlatIP side by side (also on
    synthetic collections), and writes report.md, report.json and plots into OUT.
    """
    from hashindex.bench import BenchConfig, run_bench
    from hashindex.store import open_embeddings

    if methods:
        kw["methods"] = tuple(m.strip() for m in methods.split(",") if m.strip())
    import shlex

    cmd = "hashindex " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    r = run_bench(open_embeddings(database), open_embeddings(queries), out, BenchConfig(**opt.kwargs(**kw)), progress=obj["progress"], command=cmd)
    met = [t for t in r["targets"] if t["met"] is not None]
    click.echo(f"wrote {out}/report.md, report.json and plots; targets met: {sum(t['met'] for t in met)} of {len(met)} measured")


from .live import COMMANDS as _LIVE_COMMANDS  # noqa: E402 - registered on the group defined above

for _command in _LIVE_COMMANDS:
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="hashindex")


if __name__ == "__main__":
    main()
