"""``hashindex index``: a folder of images to a search page in one command."""

from __future__ import annotations

import click

from hashindex.cli import options as opt
from hashindex.cli.live import check_port
from hashindex.cli.stages import index_options
from hashindex.core.config import BITS_RANGE, EmbedConfig, FitConfig, IndexConfig, ServeConfig, default
from hashindex.core.spec import DEFAULT_MODEL


@click.command("index")
@click.argument("source")
@click.argument("out", type=click.Path(file_okay=False))
@click.option(
    "--serve", "serve_after", is_flag=True, help="Serve the index when it is built (the page at http://HOST:PORT/)."
)
@click.option("--refit", is_flag=True, help="Fit the probe again and rebuild the index; the embeddings are kept.")
@click.option("--model", default=None, help=f"timm model name [default: {DEFAULT_MODEL}].")
@opt.weights
@click.option(
    "--image-size", type=click.IntRange(min=16), default=None, help="Input resolution [default: the model's]."
)
@click.option(
    "--views",
    type=click.IntRange(min=0),
    default=None,
    help="Augmented views cached per image for CroVCA [default: 2].",
)
@click.option(
    "--bits", type=int, default=None, help=f"Code length, {BITS_RANGE} [default: {default(FitConfig, 'bits')}]."
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=None,
    help="Probe training epochs [default: automatic, as in fit-probe].",
)
@index_options
@opt.metadata
@opt.max_memory
@opt.device
@opt.seed
@click.option("--host", default=default(ServeConfig, "host"), show_default=True, help="With --serve: address to bind.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=default(ServeConfig, "port"),
    show_default=True,
    help="With --serve: TCP port.",
)
@click.pass_obj
def index(
    obj,
    source,
    out,
    serve_after,
    refit,
    model,
    weights,
    image_size,
    views,
    bits,
    epochs,
    metadata,
    max_memory,
    device,
    seed,
    host,
    port,
    **index_kw,
):
    """Index the images of SOURCE (a folder; class subfolders give labels) into the folder OUT:
    embed them (2 augmented views each), fit a CroVCA probe, build an index, and with --serve
    serve the search page. Every stage's result stays in OUT (embeddings.h5, probe/, index/), so
    a re-run resumes where it stopped; `hashindex query OUT ...`, `serve OUT`, `add OUT ...` use it.
    """
    import hashindex

    if serve_after:
        from hashindex.core.extras import require

        require("serve", "hashindex index --serve")
        check_port(host, port)  # before the long work, not after it
    ecfg = EmbedConfig(
        **opt.kwargs(
            model=model,
            weights=weights,
            image_size=image_size,
            views=2 if views is None else views,
            max_memory=max_memory,
            device=device,
            seed=seed,
        )
    )
    fcfg = FitConfig(**opt.kwargs(bits=bits, epochs=epochs, device=device, seed=seed))
    icfg = IndexConfig(**opt.kwargs(**index_kw))
    ix = hashindex.index_images(
        source,
        out,
        embed_config=ecfg,
        fit_config=fcfg,
        index_config=icfg,
        refit=refit,
        metadata=metadata,
        progress=obj["progress"],
        say=lambda text: opt.say(obj, text),
    )
    m = ix.live.manifest
    opt.say(obj, f"{out}: {len(ix)} items, {m.index.kind} index" + (f" ({m.index.reason})" if m.index.reason else ""))
    if serve_after:
        click.echo(f"serving {out} at http://{host}:{port}/ (Ctrl-C stops)")
        hashindex.serve_index(ix, ServeConfig(host=host, port=port, device=device))
