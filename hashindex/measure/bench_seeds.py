"""Bench figures a user can count on: learned methods across seeds, the paper's asymmetric ranking,
and approximate indexes by recall of the exact top-k.

A user fits one probe at one seed, so one lucky seed says little: ``bench --seeds`` fits every
learned method at every seed and reports the mean, minimum and standard deviation of mAP beside the
default seed's figure; the report's quality targets use the minimum.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace

import numpy as np

from hashindex.measure.metrics import mean_average_precision, precision_at_k, relevance
from hashindex.search.asymmetric import asymmetric_knn

logger = logging.getLogger(__name__)

LEARNED = ("crovca", "crovca-sup")  # the methods whose fit depends on the seed through training
SEED_MODES = ("hamming", "asymmetric")


def ranking_maps(probe, xb, xq, yb, yq, k: int) -> dict:
    """mAP@k of symmetric Hamming ranking (flat index, ties by id) and of the asymmetric ranking
    of the whole database."""
    from hashindex.core.config import IndexConfig
    from hashindex.search.engines import CodeIndex

    db_codes = probe.encode(xb)
    q_logits = probe.logits(xq)
    _, ids = CodeIndex.from_codes(db_codes, IndexConfig("flat")).search(np.packbits(q_logits > 0, axis=1), k)
    _, aids = asymmetric_knn(q_logits, db_codes, k)
    return {
        "hamming": mean_average_precision(relevance(yq, yb, ids)),
        "asymmetric": mean_average_precision(relevance(yq, yb, aids)),
    }


def asymmetric_row(name: str, probe, db_codes: np.ndarray, xq, yb, yq, k: int) -> dict:
    """The bench quality row of the asymmetric ranking of the whole database (the paper's mAP)."""
    _, ids = asymmetric_knn(probe.logits(xq), db_codes, k)
    rel = relevance(yq, yb, ids)
    return {
        "method": name,
        "bits": probe.bits,
        "mode": "asymmetric",
        "nq": len(xq),
        "map": mean_average_precision(rel),
        "precision": precision_at_k(rel, k),
    }


def summarize(method: str, bits: int, mode: str, seeds: list[int], maps: list[float], default_seed: int) -> dict:
    """Mean, min, std (population) and the default seed's figure of per-seed mAPs."""
    a = np.asarray(maps, np.float64)
    return {
        "method": method,
        "bits": bits,
        "mode": mode,
        "seeds": list(seeds),
        "maps": [float(x) for x in a],
        "mean": float(a.mean()),
        "min": float(a.min()),
        "max": float(a.max()),
        "std": float(a.std()),
        "default": float(a[list(seeds).index(default_seed)]) if default_seed in seeds else None,
    }


def seed_rows(
    db,
    fit_config,
    name: str,
    seeds: tuple[int, ...],
    default_seed: int,
    default_maps: dict,
    xb,
    xq,
    yb,
    yq,
    k: int,
    bar=None,
) -> list[dict]:
    """Fit ``name`` at every seed (the default seed's figures are reused) and summarise each mode."""
    from hashindex.probe.fit import fit_probe

    per_seed = {default_seed: default_maps}
    for s in seeds:
        if s in per_seed:
            continue
        probe = fit_probe(db, replace(fit_config, seed=s), progress=False)
        per_seed[s] = ranking_maps(probe, xb, xq, yb, yq, k)
        logger.info(
            "%s %d bits seed %d: mAP %.4f (asymmetric %.4f)",
            name,
            fit_config.bits,
            s,
            per_seed[s]["hamming"],
            per_seed[s]["asymmetric"],
        )
        if bar is not None:
            bar.update(1)
    order = sorted(set(seeds) | {default_seed})
    return [
        summarize(name, fit_config.bits, m, order, [per_seed[s][m] for s in order], default_seed) for m in SEED_MODES
    ]


def worst_seed_map(report: dict, method: str, bits: int) -> float | None:
    """The minimum Hamming mAP over seeds when measured, else the default seed's figure."""
    row = next(
        (r for r in report.get("seeds", []) if r["method"] == method and r["bits"] == bits and r["mode"] == "hamming"),
        None,
    )
    if row is not None:
        return row["min"]
    q = next(
        (r for r in report["quality"] if r["method"] == method and r["bits"] == bits and r["mode"] == "hamming"), None
    )
    return None if q is None else q["map"]


def ivf_rows(
    ivf, flat_ids: np.ndarray, flat_d: np.ndarray, q_codes: np.ndarray, yq, yb, k: int, nprobes
) -> Iterator[dict]:
    """Quality of an IVF index at each nprobe, against the flat index's top-k of the same codes.

    ``recall``: the fraction of the flat top-k ids the IVF search returned; ``recall_ties``: the
    fraction of the k places filled by an item at most as far as the flat k-th distance (equal
    distances are interchangeable). mAP is given only where every query got k items back: with
    fewer, the mAP definition averages over the hits found and flatters a search that found less.
    Yields one row per nprobe, with the index still set to it (so the caller can time it).
    """
    from hashindex.measure.synthetic import recall_within
    from hashindex.search.ordering import sort_results

    fi = ivf  # the faiss IVF index
    for nprobe in nprobes:
        if nprobe > fi.nlist:
            continue
        fi.nprobe = nprobe
        d, i = fi.search(q_codes, k)  # raw: -1 marks places the probed lists could not fill
        found = i >= 0
        complete = float(found.all(axis=1).mean())
        hit = np.array([np.isin(flat_ids[r], i[r][found[r]]).sum() for r in range(len(i))])
        row = {
            "kind": f"ivf-nprobe{nprobe}",
            "nprobe": nprobe,
            "k": k,
            "recall": float(hit.mean() / k),
            "recall_ties": recall_within(d, i, flat_d),
            "complete": complete,
            "map": None,
        }
        if complete == 1.0:
            _, ids = sort_results(d.astype(np.int32), i.astype(np.int64))
            row["map"] = mean_average_precision(relevance(yq, yb, ids))
        yield row
