"""Helpers of the benchmarks that time this tree against an older commit, side by side.

The older commit is checked out in a temporary worktree (``git worktree add /tmp/old BASE``); each
measurement runs in its own process with ``PYTHONPATH`` and the working folder at one tree, so no
old code is kept in this one.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# hashindex makes OpenMP threads sleep instead of spin (hashindex/__init__.py), so timings run
# under environments that separate that from the code changes.
ENVS = {
    "as shipped": {},  # the inherited environment without OMP_WAIT_POLICY: what a user gets
    "both passive": {"OMP_WAIT_POLICY": "PASSIVE"},  # both trees sleeping: the code changes alone
    "both 1 thread": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},  # the code changes alone, one thread
}
_CLEARED = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTHONPATH")


def run_in_tree(tree: Path, code: str, args: dict, env_extra: dict) -> dict:
    """Run ``python -c code json(args)`` on ``tree``'s code; returns the JSON its last line prints."""
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    env.update(env_extra, PYTHONPATH=str(tree))
    # cwd: `python -c` puts it first on sys.path, so it must be the tree itself
    p = subprocess.run(
        [sys.executable, "-c", code, json.dumps(args)], env=env, cwd=tree, capture_output=True, text=True
    )
    if p.returncode:
        raise SystemExit(f"run in {tree} failed:\n{p.stderr[-3000:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    if not out.get("tree", "").startswith(str(tree)):
        raise SystemExit(f"the child imported {out.get('tree')}, not the tree {tree}")
    return out


def alternate(rounds: int):
    """``(round, which)`` for old/new pairs, the order flipping every round."""
    for r in range(rounds):
        for which in ("old", "new") if r % 2 == 0 else ("new", "old"):
            yield r, which


def commit_of(tree: Path) -> str:
    return subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


def machine() -> dict:
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "loadavg_at_end": os.getloadavg()}


def header(name: str) -> dict:
    """The fields every result file starts with: benchmark, command, date, machine."""
    return {
        "benchmark": name,
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
    }
