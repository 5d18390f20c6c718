"""``hashindex dedup``: groups of near-duplicate items of an index, or the near-duplicates of new images."""

from __future__ import annotations

import json
from dataclasses import replace

import click

from hashindex.cli import options as opt
from hashindex.core.config import KEEP_RULES, DedupConfig, default


@click.command()
@click.argument("index", type=click.Path(file_okay=False))
@click.option(
    "--query",
    "queries",
    multiple=True,
    type=click.Path(),
    help="Images (files or folders) to check against the index instead: their near-duplicates already in it (repeatable).",
)
@click.option(
    "-o", "--out", "json_out", type=click.Path(dir_okay=False), default=None, help="Write the groups as JSON here."
)
@click.option(
    "--csv",
    "csv_out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the groups as CSV here (one line per item).",
)
@click.option(
    "--remove-list",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the ids to remove (all but the kept item of each group), for `hashindex remove --ids-from`.",
)
@click.option(
    "--keep",
    type=click.Choice(KEEP_RULES),
    default=None,
    help=f"Which item of a group stays: first or last by id, largest or smallest file [default: {default(DedupConfig, 'keep')}].",
)
@click.option(
    "--radius",
    type=click.FloatRange(0, 0.5),
    default=None,
    help=f"Hamming radius of candidate pairs, as a fraction of the code length [default: {default(DedupConfig, 'radius')}].",
)
@click.option(
    "--radius-bits",
    type=click.IntRange(min=0),
    default=None,
    help="Hamming radius of candidate pairs in bits (overrides --radius).",
)
@click.option(
    "--min-cosine",
    type=click.FloatRange(-1, 1),
    default=None,
    help=f"Float cosine that confirms a candidate pair [default: {default(DedupConfig, 'min_cosine')}].",
)
@click.option(
    "--min-pixels",
    type=click.FloatRange(-1, 1),
    default=None,
    help="Pixel agreement that confirms a candidate pair whose cosine is lower: the correlation of the "
    "two images' 16x16 grayscale thumbnails, either mirrored (re-encoded, resized, brightened and "
    f"mirrored copies) [default: {default(DedupConfig, 'min_pixels')}].",
)
@click.option(
    "--no-pixels", is_flag=True, help="Confirm by cosine only (no image is read; for images no longer on disk)."
)
@click.option(
    "--max-pairs",
    type=click.IntRange(min=0),
    default=None,
    help="Stop with an error past this many candidate pairs (each holds about 32 bytes at the join's peak) "
    "[default: no limit].",
)
@opt.images_root
@opt.weights
@opt.device
@opt.verify
@opt.as_json
@click.pass_obj
def dedup(
    obj,
    index,
    queries,
    json_out,
    csv_out,
    remove_list,
    keep,
    radius,
    radius_bits,
    min_cosine,
    min_pixels,
    no_pixels,
    max_pairs,
    images_root,
    weights,
    device,
    verify,
    as_json,
):
    """Near-duplicate items of INDEX: pairs within a Hamming radius (an exact range search of the
    index against itself), confirmed by the cosine of their float embeddings or, below it, by the
    agreement of their pixels, grouped around the item with the most near-duplicates (a chain of
    small edits never joins two different pictures). With --query, the near-duplicates of new
    images already in the index instead.
    """
    import hashindex

    ix = hashindex.open_index(index, verify=verify, images_root=images_root, weights=weights, device=device or "auto")
    cfg = DedupConfig(
        **opt.kwargs(
            keep=keep,
            radius=radius,
            radius_bits=radius_bits,
            min_cosine=min_cosine,
            min_pixels=min_pixels,
            max_pairs=max_pairs,
        )
    )
    if no_pixels:
        cfg = replace(cfg, min_pixels=None)
    r = cfg.radius_for(ix.bits)
    pixels = "off" if cfg.min_pixels is None else f"{cfg.min_pixels:g}"
    opt.say(
        obj,
        f"radius {r} of {ix.bits} bits, min cosine {cfg.min_cosine:g}, min pixels {pixels}, keep {cfg.keep}",
        err=True,
    )
    if queries:
        found = ix.duplicates(list(queries), cfg)
        if as_json:
            click.echo(json.dumps(found, indent=1))
            return
        click.echo("query\tid\tname\thamming\tcosine\tpixels")
        for rec in found:
            for d in rec["duplicates"]:
                click.echo(
                    "\t".join(
                        opt.tsv_field(v)
                        for v in (
                            rec["query"],
                            d["id"],
                            d["name"],
                            d["hamming"],
                            "" if d["cosine"] is None else d["cosine"],
                            "" if d["pixels"] is None else d["pixels"],
                        )
                    )
                )
        return
    records = ix.duplicates(None, cfg, progress=obj["progress"])
    meta = {
        "index": str(ix.path),
        "radius_bits": r,
        "bits": ix.bits,
        "min_cosine": cfg.min_cosine,
        "min_pixels": cfg.min_pixels,
        "keep": cfg.keep,
    }
    n_remove = hashindex.write_duplicates(
        records, json_path=json_out, csv_path=csv_out, remove_path=remove_list, meta=meta
    )
    if as_json:
        click.echo(json.dumps({**meta, "groups": records}, indent=1))
    else:
        opt.say(obj, f"{len(records)} groups of near-duplicates, {n_remove} items to remove with --keep {cfg.keep}")
