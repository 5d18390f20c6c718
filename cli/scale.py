"""Commands for collections made or embedded elsewhere: ``import`` (and the ``embed --ray`` options)."""

from __future__ import annotations

import click

from hashindex.cli import options as opt


@click.command("import")
@click.argument("sources", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option(
    "--model-name",
    required=True,
    help="Name of the model that made the embeddings (recorded as an external backbone), e.g. open_clip/ViT-B-32.",
)
@click.option("--embedding-column", default=None, help="Parquet column of fixed-size float lists [default: embedding].")
@click.option(
    "--names",
    default=None,
    help="Sidecar names: a text file (one per line) or an array source (x.npy, x.h5:/names, x.npz:names).",
)
@click.option(
    "--labels", default=None, help="Sidecar labels: class ids or names (text file or array), or (n, C) 0/1 rows."
)
@click.option("--name-column", default=None, help="Parquet column with the item names (e.g. image_path).")
@click.option("--label-column", default=None, help="Parquet column with the class ids or names.")
@click.option(
    "--views-from",
    multiple=True,
    help="A source of one augmented view per row, row-aligned with SOURCES (repeat for more views).",
)
@click.option(
    "--chunk", type=click.IntRange(min=1), default=None, help="Rows held in memory at a time [default: 65536]."
)
@opt.metadata
@click.pass_obj
def import_cmd(obj, sources, out, **kw):
    """Import embeddings made elsewhere from SOURCES into the HDF5 file OUT.

    \b
    SOURCES, concatenated in the order given:
      emb-000.npy emb-001.npy ...   NumPy shards (memory-mapped)
      emb.npz[:member]              a member of an .npz [default: embeddings]
      emb.parquet                   a column of fixed-size float lists (--embedding-column)
      file.h5:/path/to/dataset      an HDF5 dataset

    Rows stream through in chunks (memory bounded by --chunk). A bad shard (other width, NaN
    rows, truncated) stops the import with an error naming it, and nothing is written. Index
    such a file as usual; query it with --embeddings (image queries are refused, since the
    model is not hashindex's). Without --views-from, CroVCA trains on feature-space views.
    """
    from hashindex import ImportConfig, import_embeddings

    if kw.get("views_from") == ():
        kw.pop("views_from")
    s = import_embeddings(list(sources), out, ImportConfig(**opt.kwargs(**kw)), progress=obj["progress"])
    click.echo(s.describe())


def ray_options(f):
    """``--ray [ADDRESS]`` and ``--ray-actors`` for ``embed``."""
    f = click.option(
        "--ray-actors",
        type=click.IntRange(min=1),
        default=None,
        help="With --ray: backbone actors [default: one per GPU of the cluster, else one CPU actor].",
    )(f)
    return click.option(
        "--ray",
        "ray_address",
        is_flag=False,
        flag_value="local",
        default=None,
        metavar="[ADDRESS]",
        help="Embed on a Ray cluster: ADDRESS of a running one (auto, host:6379, ray://host:10001), "
        "or a local one when omitted. OUT must be on storage every node sees.",
    )(f)


def embed_runner(ray_address: str | None, ray_actors: int | None):
    """The embed runner for the Ray options (None: embed in this process)."""
    if ray_address is None:
        if ray_actors is not None:
            raise click.UsageError("--ray-actors needs --ray")
        return None
    import hashindex

    return hashindex.ray_runner(None if ray_address == "local" else ray_address, ray_actors)
