"""Single-query latencies of search functions measured side by side in one process.

Two ways of taking turns, both with the drift of a shared machine falling on all functions alike:
:func:`interleaved` (blocks of a few queries each) and :func:`sliced` (slices of wall time each,
fresh queries only: each function runs long enough to hold its own working set in the caches, as
in a service that answers one kind of search).
"""

from __future__ import annotations

import time

import numpy as np


def timed(fn, q: np.ndarray, wall: list, cpu: list) -> None:
    """One call ``fn(q)``: its wall-clock and thread CPU seconds appended to ``wall`` and ``cpu``."""
    c0, t0 = time.thread_time(), time.perf_counter()
    fn(q)
    wall.append(time.perf_counter() - t0)
    cpu.append(time.thread_time() - c0)


def interleaved(fns: dict, queries: np.ndarray, rounds: int, seed: int = 0, block: int = 25) -> dict:
    """Single-query latencies of each function: each round visits the queries in a fresh random
    order, in blocks of ``block``; each function answers a block's queries one at a time, the
    functions taking turns block by block (who goes first rotates). Drift of a shared machine
    falls on all alike, and each function runs with its own data in the caches, as in a service
    that answers one kind of search (a scan between two probes flushes them: at 10M x 64 codes,
    mih's median was 0.85 ms after a scan against 0.5 ms back to back). One untimed warm-up
    call each.

    Returns, per function, ``{"wall": summary, "cpu": summary}``: wall-clock time, and the CPU
    time of the thread (both libraries run a one-thread search in the calling thread): the time
    a query takes on a core of its own, without the waits of a preempted process that a shared
    machine adds to the wall clock (a few ms at a time: a large share of a sub-millisecond query).
    """
    rng = np.random.default_rng(seed)
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for fn in fns.values():
        fn(queries[:1])
    names = list(fns)
    for _ in range(rounds):
        order = rng.permutation(len(queries))
        for b in range(0, len(order), block):
            for name in names:
                fn, tw, tc = fns[name], wall[name], cpu[name]
                for i in order[b : b + block]:
                    timed(fn, queries[i : i + 1], tw, tc)
            names = names[1:] + names[:1]
    return {name: {"wall": summary(wall[name]), "cpu": summary(cpu[name])} for name in fns}


def sliced(fns: dict, queries: np.ndarray, turns: int, turn_seconds: float, seed: int = 0) -> dict:
    """Single-query latencies of each function taking ``turns`` turns of ``turn_seconds`` of wall
    time each (who goes first rotates). Each function walks one random order of ``queries`` at its
    own pace and never answers a query twice (a repeated query would find its buckets cached), so
    a fast function needs many more queries than a slow one; one that runs out stops taking turns
    (``exhausted``). One untimed warm-up call each (the first query of the order, never timed).

    Returns, per function, ``{"wall": summary, "cpu": summary, "exhausted": bool}``.
    """
    order = np.random.default_rng(seed).permutation(len(queries))
    for fn in fns.values():
        fn(queries[order[:1]])
    pos = dict.fromkeys(fns, 1)
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    names = list(fns)
    for _ in range(turns):
        for name in names:
            fn, tw, tc, i = fns[name], wall[name], cpu[name], pos[name]
            end = time.perf_counter() + turn_seconds
            while i < len(order) and time.perf_counter() < end:
                timed(fn, queries[order[i] : order[i] + 1], tw, tc)
                i += 1
            pos[name] = i
        names = names[1:] + names[:1]
    return {
        name: {"wall": summary(wall[name]), "cpu": summary(cpu[name]), "exhausted": pos[name] == len(order)}
        for name in fns
    }


def summary(seconds) -> dict:
    ms = 1e3 * np.asarray(seconds)
    return {
        "calls": len(ms),
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }


def ratios(lat: dict, slow: str, fast: str) -> dict:
    """How many times ``fast`` is quicker than ``slow``: by mean CPU time (what the targets are
    judged on), median CPU time, mean and median wall time."""
    return {
        f"{clock}_{stat}": lat[slow][clock][f"{stat}_ms"] / lat[fast][clock][f"{stat}_ms"]
        for clock in ("cpu", "wall")
        for stat in ("mean", "p50")
    }
