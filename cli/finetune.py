"""``hashindex finetune``: LoRA adapters + HashCoder trained on images (CroVCA's second mode)."""

from __future__ import annotations

import click

from hashindex.cli import options as opt
from hashindex.cli import stages
from hashindex.core.config import HASHCODER_SIZES

# Options that mean exactly what they mean for `embed`: taken from that command, defined once.
_FROM_EMBED = (
    "split",
    "root",
    "data_dir",
    "limit",
    "model",
    "weights",
    "pretrained",
    "image_size",
    "crop_pct",
    "interpolation",
)


def _patterns(ctx, param, value):
    if value is None:
        return None
    pats = tuple(p.strip() for p in value.split(",") if p.strip())
    if not pats:
        raise click.BadParameter("give at least one pattern, or leave the option out for all eligible layers")
    return pats


@click.command("finetune")
@click.argument("source")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--bits", type=click.IntRange(min=16), default=None, help="Code length, a multiple of 8 [default: 64].")
@click.option(
    "--supervised",
    is_flag=True,
    default=None,
    help="Class targets from the source's labels (as fit-probe --supervised; see --targets).",
)
@opt.targets
@click.option(
    "--hashcoder", type=click.Choice(HASHCODER_SIZES), default=None, help="HashCoder MLP size [default: small]."
)
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Training epochs [default: 5].")
@click.option(
    "--head-epochs",
    type=click.IntRange(min=0),
    default=None,
    help="First epochs that train the HashCoder alone, before the adapters join [default: 1].",
)
@opt.batch_size(64)
@click.option(
    "--lr", type=float, default=None, help="HashCoder peak learning rate (AdamW, cosine per step) [default: 1e-3]."
)
@click.option("--adapter-lr", type=float, default=None, help="Adapters' peak learning rate [default: 5e-4].")
@click.option("--weight-decay", type=float, default=None, help="AdamW weight decay [default: 1e-2].")
@click.option("--rank", type=click.IntRange(min=1), default=None, help="LoRA rank [default: 16].")
@click.option(
    "--alpha",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="LoRA alpha; updates are scaled by alpha/rank [default: 16].",
)
@click.option(
    "--lora-dropout",
    "dropout",
    type=click.FloatRange(0, 1, max_open=True),
    default=None,
    help="Dropout on the adapters' input [default: 0.1].",
)
@click.option(
    "--lora-layers",
    "layers",
    callback=_patterns,
    default=None,
    help="Comma-separated patterns of module names that get adapters, e.g. 'blocks.5.*,blocks.6.*,conv_head' "
    "or '*.qkv,*.proj' [default: every Linear and 1x1 Conv2d except the classifier: a ViT's attention qkv/proj "
    "and MLP fc1/fc2, a convnet's pointwise convolutions].",
)
@click.option(
    "--eval-view/--no-eval-view",
    default=None,
    help="Draw each image's two views among its eval view (the un-augmented image) and two augmented "
    "views, as fit-probe does [default: on; --no-eval-view trains on two augmented views].",
)
@opt.device
@opt.seed
@click.pass_obj
def finetune(obj, source, out, split, root, data_dir, limit, rank, alpha, dropout, layers, **kw):
    """Train LoRA adapters on the backbone jointly with a CroVCA HashCoder, on the images of SOURCE.

    SOURCE is as for `embed`. Views of each image are made on the fly every epoch (two
    distinct of its eval view and two augmented ones; --no-eval-view: two augmented). OUT gets adapter.safetensors, adapter.json and probe/ (a probe folder for `build`).
    Use the adapters with `hashindex embed ... --adapter OUT`, then `build db.h5 OUT/probe index/`;
    `query` with images loads the adapter by itself. An interrupted run (even kill -9) resumes
    from its last finished epoch when re-run with the same arguments.
    """
    import hashindex

    lora = hashindex.LoRAConfig(**opt.kwargs(rank=rank, alpha=alpha, dropout=dropout, layers=layers))
    config = hashindex.FinetuneConfig(lora=lora, **opt.kwargs(**kw))
    s = hashindex.finetune(
        source, out, config, split=split, root=root, data_dir=data_dir, limit=limit, progress=obj["progress"]
    )
    click.echo(s.describe())


# embed's source and backbone options, after the two arguments.
finetune.params[2:2] = [p for p in stages.embed.params if p.name in _FROM_EMBED]
