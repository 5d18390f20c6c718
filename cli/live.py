"""Commands of the live index (add, remove, compact, info) and the HTTP service (serve)."""

from __future__ import annotations

import json
import socket

import click

from hashindex.cli import options as opt
from hashindex.core.config import DEFAULT_LOCK_WAIT, ServeConfig, default

# Not click.Path(exists=True): during a compaction's swap the folder's name is briefly absent, and
# the library finds the complete folder (and the next writer finishes the swap).
index_dir = click.argument("index", type=click.Path(file_okay=False))
wait = click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=None,
    help=f"Seconds to wait for another writer (a server with --allow-writes, another command) [default: {DEFAULT_LOCK_WAIT:g}].",
)


def _open(index, wait=None, **kw):
    import hashindex

    ix = hashindex.open_index(index, **kw)
    if wait is not None:
        ix.live.lock_wait = wait
    return ix


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
@opt.metadata
@opt.weights
@opt.device
@opt.batch_size(64)
@opt.verify
@wait
@click.pass_obj
def add(obj, index, sources, emb_file, metadata, weights, device, batch_size, verify, wait):
    """Add images to INDEX as one durable commit.

    SOURCES are image files, folders, list files or IDX folders; they are embedded with the
    backbone and preprocessing recorded in the index and encoded with its probe (not refitted:
    `hashindex info` tells how many items were added since). New items get the next free ids and
    are named relative to their folder, as built ones are.
    """
    if bool(sources) == bool(emb_file):
        raise click.UsageError("give image SOURCES or --embeddings FILE (one of the two)")
    ix = _open(index, wait, verify=verify, weights=weights, device=device or "auto")
    if emb_file:
        ids, failed = ix.add_embeddings_file(emb_file, verify=verify, metadata=metadata), 0
    else:
        ids = ix.add(list(sources), metadata=metadata, progress=obj["progress"], batch_size=batch_size or 64)
        failed = ix.last_failures
    opt.say(obj, f"added {len(ids)} items (ids {ids[0]}..{ids[-1]}) to {index}, generation {ix.info()['generation']}")
    if failed:  # about the data: shown even with -q
        click.echo(f"warning: {failed} images could not be decoded and were not added", err=True)


@click.command()
@index_dir
@click.option("--ids", type=opt.CommaList(int), multiple=True, help="Ids to remove, comma-separated (repeatable).")
@click.option(
    "--ids-from",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="A file of ids to remove (one per line or comma-separated; dedup --remove-list writes one).",
)
@click.option(
    "--names", type=opt.CommaList(str), multiple=True, help="Names of items to remove, comma-separated (repeatable)."
)
@wait
@click.pass_obj
def remove(obj, index, ids, ids_from, names, wait):
    """Remove items from INDEX by id or name, as one durable commit (ids are never reused)."""
    ids, names = _flat(ids) + (opt.read_ids(ids_from) or []), _flat(names)
    if not ids and not names:
        raise click.UsageError("give --ids, --ids-from and/or --names")
    ix = _open(index, wait)
    wanted = list(ids) + (ix.ids_of(names).tolist() if names else [])
    done = ix.remove(wanted)
    opt.say(obj, f"removed {len(done)} items from {index}, generation {ix.info()['generation']}")


@click.command()
@index_dir
@wait
@click.pass_obj
def compact(obj, index, wait):
    """Fold INDEX's commits into a new base (removed items leave its files; ids stay)."""
    ix = _open(index, wait)
    n = ix.info()["commits"]
    ix.compact()
    opt.say(obj, f"compacted {n} commits of {index}: {len(ix)} items, generation {ix.info()['generation']}")


@click.command()
@index_dir
@opt.verify
@opt.as_json
def info(index, verify, as_json):
    """What INDEX holds: items, commits since the last compaction, items added since the probe
    was fitted (refit and rebuild when they are a large share), and how its kind was chosen."""
    r = _open(index, verify=verify).info()
    if as_json:
        click.echo(json.dumps(r, indent=1))
        return
    keys = ("path", "kind", "bits", "ntotal", "base_ntotal", "commits", "generation", "next_id", "added_since_fit")
    for key in keys + ("removed_since_build", "built", "compacted", "backbone", "images_root"):
        click.echo(f"{key:<22}{'' if r[key] is None else r[key]}")
    p = r["probe"]
    click.echo(f"{'probe':<22}{p['method']}, fitted on {p['fitted_on']} items, in use for {p['age_days']} days")
    if r["index"].get("reason"):
        click.echo(f"{'chosen':<22}{r['index']['reason']}")


def check_port(host: str, port: int) -> None:
    """Refuse a port already in use before anything is loaded."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        raise click.UsageError(
            f"cannot listen on {host}:{port}: {e.strerror} (another server there? choose --port)"
        ) from None


@click.command()
@index_dir
@click.option(
    "--host",
    default=default(ServeConfig, "host"),
    show_default=True,
    help="Address to bind (the default answers this machine only; anything else serves the network: use a token and a firewall).",
)
@click.option(
    "--port", type=click.IntRange(0, 65535), default=default(ServeConfig, "port"), show_default=True, help="TCP port."
)
@click.option("--allow-writes", is_flag=True, help="Enable POST /items and DELETE /items/{id} (they need a token).")
@click.option(
    "--token",
    default=None,
    help="Bearer token of the write endpoints; visible to other users in `ps`: prefer HASHINDEX_TOKEN or --token-file.",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Read the bearer token from this file (its first line).",
)
@opt.images_root
@opt.weights
@opt.device
@opt.verify
def serve(index, host, port, allow_writes, token, token_file, images_root, weights, device, verify):
    """Serve INDEX over HTTP: a search API and a web page at /.

    One process holds the index and the backbone; it follows commits made by other processes.
    The token can also come from the HASHINDEX_TOKEN environment variable.
    """
    import os

    import hashindex
    from hashindex.core.extras import require

    require("serve", "hashindex serve")
    if token:
        click.echo(
            "warning: a token given with --token is visible to other users of this machine (ps); use --token-file or HASHINDEX_TOKEN",
            err=True,
        )
    if token_file:
        with open(token_file, encoding="utf-8") as fh:
            token = fh.readline().strip()
    token = token or os.environ.get("HASHINDEX_TOKEN") or None
    if allow_writes and not token:
        raise click.UsageError("--allow-writes needs a token: --token-file FILE or HASHINDEX_TOKEN")
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(
            f"warning: serving on {host}, beyond this machine: anyone who reaches it can search and see the images",
            err=True,
        )
    check_port(host, port)
    config = ServeConfig(
        host=host,
        port=port,
        allow_writes=allow_writes,
        token=token,
        weights=weights,
        device=device,
        images_root=images_root,
        verify=verify,
    )
    hashindex.serve_index(index, config)


COMMANDS = (add, remove, compact, info, serve)
