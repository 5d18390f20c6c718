"""Near-duplicates over HTTP: the groups of the index (kept for a generation), the near-duplicates
of an uploaded image (the check before adding it), and the choice of the item a group keeps
(the others removed through the same commits as ``DELETE /items``)."""

from __future__ import annotations

from fastapi import Request

from hashindex.core.config import KEEP_RULES, DedupConfig
from hashindex.serve.limits import ApiError, parse_id, read_body, within
from hashindex.serve.service import Service, float_param, int_param


def _config(params, max_pairs: int) -> DedupConfig:
    keep = params.get("keep") or "first"
    if keep not in KEEP_RULES:
        raise ApiError(400, f"keep must be one of {', '.join(KEEP_RULES)}")
    kw = {"keep": keep, "max_pairs": max_pairs}
    radius_bits = int_param(params.get("radius_bits"), "radius_bits", 0, 512)
    for name in ("min_cosine", "min_pixels"):
        value = float_param(params.get(name), name, -1.0, 1.0)
        if value is not None:
            kw[name] = value
    if radius_bits is not None:
        kw["radius_bits"] = radius_bits
    return DedupConfig(**kw)


def add_duplicate_routes(app, svc: Service) -> None:
    """``GET /duplicates``, ``POST /duplicates``, ``POST /duplicates/keep``."""
    from hashindex.dedup.find import query_duplicates
    from hashindex.dedup.output import match_records
    from hashindex.dedup.pixels import thumbnail, thumbnails

    live, config = svc.live, svc.config

    @app.get("/duplicates")
    async def groups(request: Request):
        cfg = _config(request.query_params, config.max_duplicate_pairs)
        snap = live.snapshot
        key = ("duplicates", snap.generation, cfg)
        if key not in svc.cache:
            svc.cache.clear()  # one generation's groups at a time
            svc.cache[key] = await within(
                config.request_timeout_s * 10, svc.run(svc.search_pool, svc.ix.duplicates, None, cfg)
            )
        records = svc.cache[key]
        return {
            "generation": snap.generation,
            "radius_bits": cfg.radius_for(snap.bits),
            "min_cosine": cfg.min_cosine,
            "min_pixels": cfg.min_pixels,
            "groups": records,
        }

    async def query_request(request: Request):
        snap = live.snapshot
        x, item_id, params, image = await svc.query_of(request, ("radius_bits", "min_cosine", "min_pixels"))
        cfg = _config(params, config.max_duplicate_pairs)
        thumbs = None if image is None else thumbnail(image)[None]
        if item_id is not None:
            x = snap.embedding_of(item_id)
            if x is None:
                raise ApiError(409, "the item's float embedding is not available")
            thumbs = (await svc.run(svc.decode_pool, thumbnails, snap, snap.positions([item_id])))[0]
        q, rows, d, cos, pix = await svc.run(
            svc.search_pool, query_duplicates, snap, snap.probe.logits(x), x, cfg, thumbs
        )
        if item_id is not None:  # not the item itself
            keep = snap.ids[rows] != item_id
            rows, d, cos, pix = rows[keep], d[keep], cos[keep], pix[keep]
        found = match_records(snap, rows, d, cos, pix)
        return {
            "duplicates": found,
            "radius_bits": cfg.radius_for(snap.bits),
            "min_cosine": cfg.min_cosine,
            "min_pixels": cfg.min_pixels,
        }

    @app.post("/duplicates")
    async def duplicates_of(request: Request):
        return await within(config.request_timeout_s, query_request(request))

    @app.post("/duplicates/keep")
    async def keep(request: Request):
        import json

        svc.authorize(request)
        try:
            body = json.loads(await read_body(request, config))
        except (ValueError, RecursionError):
            raise ApiError(400, 'the body must be JSON: {"keep": 5, "remove": [6, 7]}') from None
        if not isinstance(body, dict) or not isinstance(body.get("remove"), list) or not body["remove"]:
            raise ApiError(400, 'give "remove": a non-empty list of item ids (and "keep": the id that stays)')
        remove = sorted({parse_id(v) for v in body["remove"]})
        kept = parse_id(body["keep"]) if "keep" in body else None
        if kept in remove:
            raise ApiError(400, "the item kept cannot also be removed")
        try:
            live.snapshot.positions(remove + ([kept] if kept is not None else []))
        except Exception as e:
            raise ApiError(404, str(e)) from None
        await svc.write(live.remove, remove)
        return {"kept": kept, "removed": remove, "generation": live.snapshot.generation}
