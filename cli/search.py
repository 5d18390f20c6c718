"""Commands that read an index: query and evaluate, and the bench over embeddings files."""

from __future__ import annotations

import json
import sys

import click

from hashindex.cli import options as opt
from hashindex.core.config import BENCH_METHODS, HASHCODER_SIZES, BenchConfig, default


@click.command()
@click.argument("index", type=click.Path(file_okay=False))
@click.argument("images", nargs=-1, type=click.Path())
@click.option(
    "--embeddings",
    "emb_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Query with the embeddings of this HDF5 file instead of images.",
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="With --embeddings: only the first N queries.")
@opt.k_option(10, "Results per query (more than the index holds gives all of them).")
@opt.where
@opt.ids_file
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
@opt.images_root
@opt.verify
@opt.as_json
def query(
    index,
    images,
    emb_file,
    limit,
    k,
    where,
    ids_file,
    nprobe,
    rerank,
    asymmetric,
    weights,
    adapter,
    device,
    runtime,
    images_root,
    verify,
    as_json,
):
    """Search INDEX with IMAGES (files or folders, embedded by the index's backbone) or --embeddings.

    Prints query, rank, id, name, label and Hamming distance per result, one tab-separated line
    each (tabs, newlines and backslashes in names escaped as \\t, \\n, \\\\; --json gives them as
    they are); equal distances are ordered by id.
    """
    import hashindex

    if bool(images) == bool(emb_file):
        raise click.UsageError("give query IMAGES or --embeddings FILE (one of the two)")
    ix = hashindex.open_index(
        index,
        verify=verify,
        images_root=images_root,
        weights=weights,
        adapter=adapter,
        device=device or "auto",
        runtime=runtime or "auto",
    )
    kw = dict(
        rerank=rerank,
        asymmetric=asymmetric,
        device=device or "auto",
        where=list(where) or None,
        ids=opt.read_ids(ids_file),
        nprobe=nprobe,
    )
    if emb_file:
        from hashindex.store.reader import open_embeddings

        q = open_embeddings(emb_file, verify=verify)
        ix.snapshot.base.check_queries(q)
        rows = slice(0, min(limit or q.n, q.n))
        results = ix.search(q.embeddings(rows), k, names=q.names(rows), **kw)
    else:
        results = ix.search(list(images), k, **kw)
    print_results(results.to_dicts(), as_json)


def print_results(results: list[dict], as_json: bool) -> None:
    """Search results as JSON, or one tab-separated line per hit under a header."""
    if as_json:
        click.echo(json.dumps(results, indent=1))
        return
    scored = any("score" in hit for r in results for hit in r["results"])
    click.echo("query\trank\tid\tname\tlabel\tdistance" + ("\tscore" if scored else ""))
    for r in results:
        for hit in r["results"]:
            fields = (r["query"], hit["rank"], hit["id"], hit["name"], hit["label"], hit["distance"])
            click.echo("\t".join(opt.tsv_field(v) for v in fields) + (f"\t{hit['score']}" if scored else ""))


@click.command()
@click.argument("index", type=click.Path(file_okay=False))
@click.argument("queries", type=click.Path(dir_okay=False))
@opt.k_option(1000, "Ranking depth of mAP@k.")
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
@opt.verify
@opt.as_json
def evaluate(index, queries, k, db_embeddings, no_float, nprobe, rerank, asymmetric, verify, as_json):
    """mAP@k of INDEX on the labelled QUERIES embeddings, beside float cosine kNN."""
    import hashindex
    from hashindex.store.reader import open_embeddings

    topk = k
    ix = hashindex.open_index(index, verify=verify)  # added items included
    db = open_embeddings(db_embeddings, verify=verify) if db_embeddings else None
    q = open_embeddings(queries, verify=verify)
    r = hashindex.evaluate(
        ix, q, topk, db=db, with_float=not no_float, rerank=rerank, asymmetric=asymmetric, nprobe=nprobe
    )
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


@click.command()
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
@opt.verify
@click.pass_obj
def bench(obj, database, queries, out, verify, **kw):
    """Quality, speed and memory of every method and index on DATABASE and QUERIES embeddings.

    Fits each method at each code length, measures mAP@k / precision@k / precision within
    Hamming radius 2 / PR curves (Hamming ranking, float re-rank, asymmetric re-rank) against
    float cosine, times flat, IVF and lookup indexes and float IndexFlatIP side by side (also on
    synthetic collections), times embed (with --images), fit-probe and one query process beside
    bare reference loops, and writes report.md, report.json and plots into OUT.
    """
    import shlex

    import hashindex

    cmd = "hashindex " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    db, q = hashindex.open_embeddings(database, verify=verify), hashindex.open_embeddings(queries, verify=verify)
    r = hashindex.run_bench(db, q, out, BenchConfig(**opt.kwargs(**kw)), progress=obj["progress"], command=cmd)
    met = [t for t in r["targets"] if t["met"] is not None]
    click.echo(
        f"wrote {out}/report.md, report.json and plots; targets met: {sum(t['met'] for t in met)} of {len(met)} measured"
    )


COMMANDS = (query, evaluate, bench)
