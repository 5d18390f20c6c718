"""Commands of the live index (add, remove, compact, info) and the HTTP service (serve)."""

from __future__ import annotations

import json

import click

from hashindex.cli import options as opt
from hashindex.core.config import DEFAULT_LOCK_WAIT, ServeConfig, default

index_dir = click.argument("index", type=click.Path(file_okay=False, exists=True))
wait = click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=None,
    help=f"Seconds to wait for another writer (a server with --allow-writes, another command) [default: {DEFAULT_LOCK_WAIT:g}].",
)


def _say(obj, text: str) -> None:
    from hashindex.cli.main import _say as say  # cli.main imports this module at its end

    say(obj, text)


def _open(index, wait):
    from hashindex.live.live_index import open_live

    live = open_live(index)
    if wait is not None:
        live.lock_wait = wait
    return live


def _flat(groups) -> list:
    return [v for g in groups or () for v in g]


@click.command()
@index_dir
@click.argument("sources", nargs=-1)
@click.option(
    "--embeddings",
    "emb_file",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Add the items of this embeddings file (same backbone and preprocessing) instead of images.",
)
@opt.weights
@opt.device
@opt.batch_size
@wait
@click.pass_obj
def add(obj, index, sources, emb_file, weights, device, batch_size, wait):
    """Add images to INDEX as one durable commit.

    SOURCES are image files, folders, list files or IDX folders; they are embedded with the
    backbone and preprocessing recorded in the index and encoded with its probe (not refitted:
    `hashindex info` tells how many items were added since). New items get the next free ids.
    """
    from hashindex.live.ingest import add_embeddings_file, add_images

    if bool(sources) == bool(emb_file):
        raise click.UsageError("give image SOURCES or --embeddings FILE (one of the two)")
    live = _open(index, wait)
    if emb_file:
        ids, failed = add_embeddings_file(live, emb_file), 0
    else:
        ids, failed = add_images(
            live, list(sources), weights=weights, device=device, batch_size=batch_size or 64, progress=obj["progress"]
        )
    _say(obj, f"added {len(ids)} items (ids {ids[0]}..{ids[-1]}) to {index}, generation {live.state.generation}")
    if failed:  # about the data: shown even with -q
        click.echo(f"warning: {failed} images could not be decoded and were not added", err=True)


@click.command()
@index_dir
@click.option("--ids", type=opt.CommaList(int), multiple=True, help="Ids to remove, comma-separated (repeatable).")
@click.option(
    "--names",
    type=opt.CommaList(str),
    multiple=True,
    help="Names (paths) of items to remove, comma-separated (repeatable).",
)
@wait
@click.pass_obj
def remove(obj, index, ids, names, wait):
    """Remove items from INDEX by id or name, as one durable commit (ids are never reused)."""
    ids, names = _flat(ids), _flat(names)
    if not ids and not names:
        raise click.UsageError("give --ids and/or --names")
    live = _open(index, wait)
    wanted = list(ids) + (live.ids_of_names(names).tolist() if names else [])
    done = live.remove(wanted)
    _say(obj, f"removed {len(done)} items from {index}, generation {live.state.generation}")


@click.command()
@index_dir
@wait
@click.pass_obj
def compact(obj, index, wait):
    """Fold INDEX's commits into a new base (removed items leave its files; ids stay)."""
    live = _open(index, wait)
    n = len(live.state.commits)
    live.compact()
    _say(obj, f"compacted {n} commits of {index}: {live.snapshot.ntotal} items, generation {live.state.generation}")


@click.command()
@index_dir
@opt.as_json
def info(index, as_json):
    """What INDEX holds: items, commits since the last compaction, items added since the probe
    was fitted (refit and rebuild when they are a large share, see the README)."""
    from hashindex.live.live_index import open_live

    r = open_live(index).info()
    if as_json:
        click.echo(json.dumps(r, indent=1))
        return
    for key in (
        "path",
        "kind",
        "bits",
        "ntotal",
        "base_ntotal",
        "commits",
        "generation",
        "next_id",
        "added_since_fit",
        "removed_since_build",
        "built",
        "compacted",
        "backbone",
    ):
        click.echo(f"{key:<22}{r[key]}")
    click.echo(
        f"{'probe':<22}{r['probe']['method']}, fitted on {r['probe']['fitted_on']} items, in use for {r['probe']['age_days']} days"
    )


@click.command()
@index_dir
@click.option(
    "--host",
    default=default(ServeConfig, "host"),
    show_default=True,
    help="Address to bind (the default answers this machine only).",
)
@click.option(
    "--port", type=click.IntRange(0, 65535), default=default(ServeConfig, "port"), show_default=True, help="TCP port."
)
@click.option("--allow-writes", is_flag=True, help="Enable POST /items and DELETE /items/{id} (they need --token).")
@click.option(
    "--token",
    envvar="HASHINDEX_TOKEN",
    default=None,
    help="Bearer token the write endpoints require [env: HASHINDEX_TOKEN].",
)
@opt.weights
@opt.device
def serve(index, host, port, allow_writes, token, weights, device):
    """Serve INDEX over HTTP: a search API and a web page at /.

    One process holds the index and the backbone; it follows commits made by other processes.
    """
    from hashindex.serve.app import run

    if allow_writes and not token:
        raise click.UsageError("--allow-writes needs --token T (or HASHINDEX_TOKEN)")
    run(
        index, ServeConfig(host=host, port=port, allow_writes=allow_writes, token=token, weights=weights, device=device)
    )


COMMANDS = (add, remove, compact, info, serve)
