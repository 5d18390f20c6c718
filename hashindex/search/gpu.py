"""Exact Hamming top-k on a GPU (or, for tests and comparison, torch on the CPU).

Two engines answer the same question as faiss ``IndexBinaryFlat`` on the CPU — the ``k`` codes
nearest by Hamming distance, equal distances ordered by id — with the same result:

- :class:`FaissGpuHamming`: faiss ``GpuIndexBinaryFlat``, when faiss was built with GPU support.
  Its selection breaks ties arbitrarily, so a row whose k-th distance may continue past the
  returned ones is searched again wider (up to faiss's GPU limit on k, then by the torch engine).
- :class:`TorchHamming`: XOR and a SWAR popcount over the packed codes viewed as 32- or 64-bit
  words (torch has no popcount), in blocks of queries × database rows bounded by a memory budget.
  Each block is reduced to its top k by the unique key ``distance << 40 | id``, so selecting the
  smallest keys orders by distance and then id with no tie left to chance; the running top k of a
  query block and each database block's top k merge the same way.

Torch and faiss are imported when a device search is made, never when this module is loaded.
"""

from __future__ import annotations

import os
import sys
import threading
from functools import cache

import numpy as np

from hashindex.core.config import DEVICES
from hashindex.core.errors import InputError

ID_BITS = 40  # ids below 2**40; the distance (<= 1024) sits above them in an int64 key
MEMORY_BYTES = {"cpu": 256 << 20, "cuda": 2 << 30}  # per block of queries x database rows
MAX_CHUNK = 1 << 22  # database rows per block
FAISS_GPU_MAX_K = 2048  # faiss's GPU k-selection limit

# SWAR popcount constants per word width: masks of 2-, 4- and 8-bit fields, the byte-sum multiplier.
_SWAR = {
    4: (0x55555555, 0x33333333, 0x0F0F0F0F, 0x01010101, 24),
    8: (0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F, 0x0101010101010101, 56),
}
_lock = threading.Lock()


@cache
def cuda_available() -> bool:
    """Whether a CUDA device can search: faiss sees a GPU, or torch does. torch is only imported
    for this when an NVIDIA driver is installed, so a CPU-only machine never pays its import."""
    import faiss

    if hasattr(faiss, "GpuIndexBinaryFlat") and faiss.get_num_gpus() > 0:
        return True
    if "torch" not in sys.modules and not os.path.exists("/proc/driver/nvidia/version"):
        return False
    import torch

    return torch.cuda.is_available()


def search_device(device: str | None) -> str:
    """The device a flat Hamming search runs on: ``cpu`` (faiss on the CPU) or ``cuda``.

    ``None`` and ``cpu`` give ``cpu`` without looking further; ``auto`` gives ``cuda`` when
    :func:`cuda_available`.

    Raises:
        InputError: an unknown device, or ``cuda`` without a CUDA device.
    """
    if device is None or device == "cpu":
        return "cpu"
    if device not in DEVICES:
        raise InputError(f"unknown device {device!r}: use {', '.join(DEVICES)}")
    if cuda_available():
        return "cuda"
    if device == "cuda":
        raise InputError("--device cuda was given but no CUDA device is available")
    return "cpu"


def _words(codes: np.ndarray, wsize: int) -> np.ndarray:
    """Packed codes as ``(n, words)`` int32/int64, zero-padded to whole words (zeros XOR to 0)."""
    n, nbytes = codes.shape
    pad = -nbytes % wsize
    if pad:
        codes = np.concatenate([codes, np.zeros((n, pad), np.uint8)], axis=1)
    return np.ascontiguousarray(codes).view(np.int32 if wsize == 4 else np.int64)


class TorchHamming:
    """Exact Hamming top-k over packed codes with torch, on any torch device.

    Args:
        codes: ``(n, bits // 8)`` uint8 database codes; results name rows by position, or by
            ``ids`` when given.
        device: a torch device (``cpu``, ``cuda``, ``cuda:1``).
        ids: int64 id of each row (need not be sorted); ties are ordered by these ids.
        chunk: most database rows per block (default ``MAX_CHUNK``).
        memory_bytes: budget for one block's temporaries (default per device type, see
            ``MEMORY_BYTES``); a block holds ``rows x queries`` pairs of about
            ``2 x bytes per code + 16`` bytes each.
    """

    def __init__(
        self,
        codes: np.ndarray,
        device: str = "cpu",
        ids: np.ndarray | None = None,
        *,
        chunk: int | None = None,
        memory_bytes: int | None = None,
    ):
        import torch

        codes = np.asarray(codes, np.uint8)
        if codes.ndim != 2 or codes.shape[1] == 0:
            raise InputError(f"codes must be 2-D (n, bits // 8), got shape {codes.shape}")
        self.n, self.nbytes = codes.shape
        if self.n >= 1 << ID_BITS:
            raise InputError(f"at most 2**{ID_BITS} codes, got {self.n}")
        self.device = torch.device(device)
        self.wsize = 4 if self.nbytes <= 4 else 8
        self.ids = None
        if ids is not None:
            ids = np.asarray(ids, np.int64)
            order = np.argsort(ids, kind="stable")  # rows in id order: ties by row are ties by id
            codes, self.ids = codes[order], ids[order]
        self.db = torch.from_numpy(_words(codes, self.wsize)).to(self.device)
        self.chunk = max(1, min(chunk or MAX_CHUNK, MAX_CHUNK))
        self.memory_bytes = memory_bytes or MEMORY_BYTES["cuda" if self.device.type == "cuda" else "cpu"]
        self.pair_bytes = 2 * self.db.shape[1] * self.wsize + 16

    def _distances(self, q, db):
        """``(nq, nb)`` Hamming distances (int64) between word arrays ``(nq, W)`` and ``(nb, W)``.

        Arithmetic shifts bring in copies of the sign bit; every mask clears the top bits they
        land in, so the fields count as with logical shifts. The products wrap (two's complement).
        """
        import torch

        m1, m2, m4, h01, top = _SWAR[self.wsize]
        x = q[:, None, :] ^ db[None, :, :]
        t = torch.bitwise_right_shift(x, 1)
        x -= t.bitwise_and_(m1)  # 2-bit fields: counts 0..2
        torch.bitwise_right_shift(x, 2, out=t)
        x.bitwise_and_(m2).add_(t.bitwise_and_(m2))  # 4-bit fields: 0..4
        torch.bitwise_right_shift(x, 4, out=t)
        x.add_(t).bitwise_and_(m4)  # bytes: 0..8
        del t
        x.mul_(h01).bitwise_right_shift_(top)  # the sum of a word's bytes (<= 64) is in its top byte
        return (x[:, :, 0] if x.shape[2] == 1 else x.sum(2)).long()

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of each query by (distance, id); ``k`` is capped at the number of codes.

        Returns:
            ``(D, I)``: int32 distances and int64 ids, shape ``(nq, min(k, n))``.
        """
        import torch

        queries = np.asarray(queries, np.uint8)
        if queries.ndim != 2 or queries.shape[1] != self.nbytes:
            raise InputError(f"queries must be (nq, {self.nbytes}) uint8, got shape {queries.shape}")
        k = min(int(k), self.n)
        nq = len(queries)
        d_out, i_out = np.empty((nq, k), np.int32), np.empty((nq, k), np.int64)
        if nq == 0 or k == 0:
            return d_out, i_out
        rows = max(1, min(self.n, self.chunk, self.memory_bytes // self.pair_bytes))
        qstep = max(1, min(nq, self.memory_bytes // (rows * self.pair_bytes)))
        q_all = torch.from_numpy(_words(queries, self.wsize)).to(self.device)
        pos = torch.arange(rows, dtype=torch.int64, device=self.device)
        low = (1 << ID_BITS) - 1
        with torch.inference_mode():
            for qs in range(0, nq, qstep):
                q = q_all[qs : qs + qstep]
                best = None
                for s in range(0, self.n, rows):
                    db = self.db[s : s + rows]
                    key = self._distances(q, db).bitwise_left_shift_(ID_BITS).bitwise_or_(pos[: len(db)] + s)
                    key = torch.topk(key, min(k, len(db)), dim=1, largest=False).values
                    if best is not None:  # merge with the running top k: keys are unique, so exact
                        key = torch.cat([best, key], 1)
                        key = torch.topk(key, min(k, key.shape[1]), dim=1, largest=False).values
                    best = key
                best = best.cpu().numpy()
                d_out[qs : qs + qstep] = best >> ID_BITS
                i_out[qs : qs + qstep] = best & low
        if self.ids is not None:
            i_out = self.ids[i_out]
        return d_out, i_out


class FaissGpuHamming:
    """faiss ``GpuIndexBinaryFlat`` with results made equal to the CPU's (ties by id).

    A row's k results are final once a result beyond them lies farther than the k-th: then every
    code at the k-th distance was among those returned, and sorting by (distance, id) picks the
    same ones as the CPU. Rows where that is not shown are searched again with twice the k, up to
    ``FAISS_GPU_MAX_K``; beyond it, by :class:`TorchHamming` on the same device.
    """

    def __init__(self, codes: np.ndarray, ids: np.ndarray | None = None):
        import faiss

        codes = np.ascontiguousarray(codes, np.uint8)
        self.n = len(codes)
        self.codes, self.ids = codes, None if ids is None else np.asarray(ids, np.int64)
        self.res = faiss.StandardGpuResources()
        self.index = faiss.GpuIndexBinaryFlat(self.res, codes.shape[1] * 8)
        self.index.add(codes)
        self._torch = None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, np.uint8)
        k = min(int(k), self.n)
        d_out, i_out = np.empty((len(queries), k), np.int32), np.empty((len(queries), k), np.int64)
        todo, kk = np.arange(len(queries)), min(self.n, k + 1)  # one beyond k shows whether ties go on
        while len(todo) and k:
            if kk > FAISS_GPU_MAX_K:
                if self._torch is None:
                    self._torch = TorchHamming(self.codes, "cuda", self.ids)
                d_out[todo], i_out[todo] = self._torch.search(queries[todo], k)
                break
            d, i = self.index.search(queries[todo], kk)
            i = i if self.ids is None else self.ids[i]
            order = np.lexsort((i, d), axis=1)
            d, i = np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)
            done = np.full(len(todo), True) if kk == self.n else d[:, -1] > d[:, k - 1]
            d_out[todo[done]], i_out[todo[done]] = d[done, :k], i[done, :k]
            todo, kk = todo[~done], min(self.n, 2 * kk)
        return d_out, i_out


def searcher(codes: np.ndarray, device: str, ids: np.ndarray | None = None):
    """The engine for ``device``: faiss on the GPU when this faiss has it, else torch."""
    import faiss

    if device.startswith("cuda") and hasattr(faiss, "GpuIndexBinaryFlat") and faiss.get_num_gpus() > 0:
        return FaissGpuHamming(codes, ids)
    return TorchHamming(codes, device, ids)


def device_search(ci, codes: np.ndarray, k: int, device: str) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows of a flat :class:`~hashindex.search.engines.CodeIndex` on ``device``; the
    codes go to the device once per code index and stay.

    Args:
        ci: a flat code index.
        codes: validated ``(nq, bits // 8)`` uint8 queries.
        k: results per query (at most the number of codes).
        device: a torch device name.

    Returns:
        ``(D, rows)``, ordered by distance then row.
    """
    with _lock:  # one copy per index, even when the service's search threads start together
        cached = ci.device_cache
        if cached is None or cached[0] != device:
            cached = (device, searcher(np.asarray(ci.codes), device))
            ci.device_cache = cached
    return cached[1].search(codes, k)
