"""How many images a forward pass may take within a memory budget.

A convolutional backbone's activations grow with the pixels of a batch: EfficientNet-Lite0 under
ONNX Runtime peaked at about 25 MB per 224-px image (about 520 bytes per input pixel; batch 384,
the old default of 128 images with 2 views, peaked at 10.7 GB; BENCHMARKS.md "Bounded memory"),
and a training step keeps about three times that for the backward pass. Batches are sized so the
process and its decoding workers stay within ``max_memory`` counting what the process already
holds; a worker's own pages (a forked interpreter and its prefetched images) are reserved at
``WORKER_BYTES`` (the embedding and its one worker measured 2.09 GB of PSS against a 2 GiB budget
without that reserve: BENCHMARKS.md "A folder of one's own photos").
"""

from __future__ import annotations

ACTIVATION_BYTES_PER_PIXEL = 520
TRAINING_FACTOR = 3
DEFAULT_MAX_MEMORY = 2 << 30
WORKER_BYTES = 128 << 20


def current_rss() -> int:
    """This process's resident memory in bytes (0 where the OS does not tell)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def auto_batch(
    image_size: int,
    passes: int = 1,
    max_memory: int = DEFAULT_MAX_MEMORY,
    *,
    training: bool = False,
    workers: int = 0,
    cap: int = 128,
) -> int:
    """Images per batch so that ``passes`` forward passes of each (the eval view and the
    augmented views go through together) fit what ``max_memory`` leaves beside the process's
    resident memory now and ``workers`` decoding workers (at least a quarter of the budget is
    assumed available)."""
    per_image = (
        ACTIVATION_BYTES_PER_PIXEL * image_size * image_size * (TRAINING_FACTOR if training else 1) * max(1, passes)
    )
    room = max(max_memory - current_rss() - workers * WORKER_BYTES, max_memory // 4)
    return int(max(1, min(cap, room // per_image)))
