"""The option sets of every stage, as frozen dataclasses: the one source of truth for choices and
defaults. Stages take them, artifacts record them, and the CLI derives its choices and help
defaults from them. Importing this module does not import torch.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Literal, get_args

import numpy as np

from hashindex.core.codes import MAX_BITS, MIN_PROBE_BITS, check_bits
from hashindex.core.errors import InputError
from hashindex.core.spec import DEFAULT_MODEL, Interpolation

Method = Literal["crovca", "lsh", "pca", "pca-rr", "itq"]
METHODS: tuple[str, ...] = get_args(Method)
HashcoderSize = Literal["small", "large"]
HASHCODER_SIZES: tuple[str, ...] = get_args(HashcoderSize)
# auto: build chooses among the others from the collection (hashindex.index.auto).
IndexKind = Literal["auto", "flat", "ivf", "lookup", "mih"]
INDEX_KINDS: tuple[str, ...] = get_args(IndexKind)
Device = Literal["auto", "cpu", "cuda"]
DEVICES: tuple[str, ...] = get_args(Device)
# What runs the backbone: torch, or its ONNX export under ONNX Runtime (CPU only; about twice
# torch's speed there). auto: ONNX Runtime on the CPU when it is installed, torch on a GPU.
Runtime = Literal["auto", "torch", "onnx"]
RUNTIMES: tuple[str, ...] = get_args(Runtime)
# Supervised CroVCA targets (hashindex.probe.targets): a class codebook, or the paper's prototypes.
TargetKind = Literal["codebook", "prototype"]
TARGETS: tuple[str, ...] = get_args(TargetKind)
BenchMethod = Literal["crovca", "crovca-sup", "lsh", "pca", "pca-rr", "itq"]
BENCH_METHODS: tuple[str, ...] = get_args(BenchMethod)
# Display names, in the order reports list methods (baselines first).
METHOD_NAMES = {
    "lsh": "LSH",
    "pca": "PCA-sign",
    "pca-rr": "PCA + random rotation",
    "itq": "ITQ",
    "crovca": "CroVCA unsupervised",
    "crovca-sup": "CroVCA supervised",
}
# Quality targets of the Fashion-MNIST protocol (60k database, 10k queries): mAP@1000 (%) minima.
# With several seeds (bench --seeds) they apply to the minimum over seeds.
PROTOCOL_TARGETS = {"crovca": {16: 72.5, 64: 76.0}, "crovca-sup": {16: 80.0, 32: 86.0, 64: 86.0, 128: 86.0}}
DEFAULT_LOCK_WAIT = 10.0  # seconds a live index's writer waits for another writer
DEFAULT_RERANK = 4  # candidates R·k re-ranked by float cosine or the asymmetric distance
BITS_RANGE = f"a multiple of 8 in {MIN_PROBE_BITS}..{MAX_BITS}"


def default(cls, name: str):
    """The default value of field ``name`` of a config dataclass (for help texts)."""
    for f in fields(cls):
        if f.name == name:
            return f.default if f.default is not MISSING else f.default_factory()
    raise KeyError(name)


@dataclass(frozen=True)
class AugmentConfig:
    """The view recipe, stored with the embeddings."""

    scale: tuple[float, float] = (0.4, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.2
    gray_p: float = 0.2
    blur_p: float = 0.1
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.1


@dataclass(frozen=True)
class BackboneOptions:
    """Which backbone and preprocessing: the options embed and finetune share."""

    model: str = DEFAULT_MODEL
    weights: str | None = None
    pretrained: bool = False
    image_size: int | None = None
    crop_pct: float | None = None
    interpolation: Interpolation | None = None


@dataclass(frozen=True)
class EmbedConfig(BackboneOptions):
    """Options of the embed stage (see ``hashindex embed --help``).

    ``max_failures`` is how many images may fail to decode before ``embed`` raises
    ``TooManyFailuresError`` (after writing the file): a count when >= 1, a fraction of the
    source's images when below 1; 0 allows none. ``commit_seconds`` is how often progress is made
    durable (0: after every batch); a crash loses at most that much work. The CLI takes it from
    the ``HASHINDEX_COMMIT_SECONDS`` environment variable when set. ``adapter`` is a folder made
    by ``hashindex finetune``: its LoRA adapters go on the backbone (image size, crop and
    interpolation default to those it was trained with), and the file's backbone spec names it.
    ``runtime``: see :data:`Runtime`. ``jpeg_draft``: decode JPEGs at a reduced DCT scale no
    smaller than the base image (:func:`hashindex.embedding.sources.decode_image`).
    """

    views: int = 0
    batch_size: int | None = None  # None: as many as fit max_memory (hashindex.backbone.memory)
    max_memory: int = 2 << 30
    device: Device = "auto"
    seed: int = 0
    num_workers: int | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    max_failures: float = 0
    commit_seconds: float = 1.0
    adapter: str | None = None
    runtime: Runtime = "auto"
    jpeg_draft: bool = True


# Weight of CroVCA's coding-rate term: codes of at most SHORT_CODE_BITS bits need a stronger one to
# keep their few bits decorrelated (16 bits on Fashion-MNIST: 0.1 left bits correlated, |r| 0.25-0.28,
# and mAP varying by 1.8 points over seeds; 0.2: |r| 0.11-0.12; BENCHMARKS.md "coding-rate weight").
RATE_WEIGHT = 0.1
RATE_WEIGHT_SHORT = 0.2
SHORT_CODE_BITS = 16


def default_rate_weight(bits: int) -> float:
    """The coding-rate weight for codes of ``bits`` bits when none is given."""
    return RATE_WEIGHT_SHORT if bits <= SHORT_CODE_BITS else RATE_WEIGHT


@dataclass(frozen=True)
class FitConfig:
    """Options of fit-probe (the CroVCA defaults).

    ``eval_view``: CroVCA draws its two views per sample among the cached augmented views *and*
    the eval embedding (the identity augmentation), so the embeddings that get indexed are part
    of the training distribution (measured in BENCHMARKS.md).

    ``targets`` (supervised): ``codebook`` gives each class a fixed code from a codebook with a
    guaranteed minimum distance (:mod:`hashindex.probe.targets`); ``prototype`` is the paper's sign
    of the class prototypes, which can merge two classes.

    ``epochs``: None trains for ``max(5, ceil(min_steps / steps per epoch))`` epochs, so a small
    collection still gets ``min_steps`` optimiser steps; a number is an explicit override.
    """

    method: Method = "crovca"
    bits: int = 64
    supervised: bool = False
    hashcoder: HashcoderSize = "small"
    epochs: int | None = None
    min_steps: int = 500  # measured on collections of 100-4,000 items: BENCHMARKS.md, training length
    targets: TargetKind = "codebook"
    batch_size: int = 256
    lr: float = 1e-3
    min_lr: float = 1e-6
    weight_decay: float = 1e-2
    eps: float = 0.05
    reg: float | None = None  # None: default_rate_weight(bits)
    eval_view: bool = True
    sample: int | None = 250_000  # rows a probe fits on, streamed from the file (None: all)
    device: Device = "auto"
    seed: int = 0

    @property
    def rate_weight(self) -> float:
        """``reg``, or the default for this code length."""
        return default_rate_weight(self.bits) if self.reg is None else self.reg

    def validate(self) -> None:
        check_bits(self.bits, MIN_PROBE_BITS)
        if self.method not in METHODS:
            raise InputError(f"unknown method {self.method!r}: use one of {', '.join(METHODS)}")
        if self.hashcoder not in HASHCODER_SIZES:
            raise InputError(f"unknown hashcoder {self.hashcoder!r}: use one of {', '.join(HASHCODER_SIZES)}")
        if self.supervised and self.method != "crovca":
            raise InputError(f"--supervised applies to crovca only, not {self.method}")
        if self.targets not in TARGETS:
            raise InputError(f"unknown targets {self.targets!r}: use one of {', '.join(TARGETS)}")
        if self.min_steps < 0:
            raise InputError(f"--min-steps must be >= 0, got {self.min_steps}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise InputError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("lr", "eps"):
            if not getattr(self, name) > 0:
                raise InputError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.sample is not None and self.sample < 2:
            raise InputError(f"--sample must be at least 2, got {self.sample}")
        if (self.reg is not None and self.reg < 0) or self.weight_decay < 0:
            raise InputError("--reg and --weight-decay must be >= 0")


@dataclass(frozen=True)
class IndexConfig:
    """Index options.

    ``kind``: ``auto`` (the default of ``build``) lets the build choose an exact kind from the
    collection's size, code length and a sample of its own neighbour distances, or IVF when
    ``approximate`` is allowed or when no exact kind meets ``latency_ms`` (one query, k = 100,
    single thread, as estimated from the sample); the chosen kind and the reason are recorded.
    ``nlist`` defaults to about 4·√n (at most n/39, so k-means has enough points per list),
    ``nprobe`` to max(1, nlist // 16); ``tables`` (mih): substrings of about log2(n) - 7 bits
    (:func:`~hashindex.core.codes.default_mih_tables`).
    """

    kind: IndexKind = "auto"
    nlist: int | None = None
    nprobe: int | None = None
    tables: int | None = None
    approximate: bool = False
    latency_ms: float | None = None
    reason: str | None = None

    def resolved(self, n: int, bits: int) -> IndexConfig:
        """The concrete parameters for n codes of ``bits`` bits (``auto`` must be chosen first).

        Raises:
            InputError: an unknown kind or parameters out of range.
        """
        from hashindex.core.codes import MAX_LOOKUP_BITS

        if self.kind not in INDEX_KINDS or self.kind == "auto":
            raise InputError(f"unknown index type {self.kind!r}: use {', '.join(INDEX_KINDS[1:])}", setting="kind")
        if self.kind == "lookup" and bits > MAX_LOOKUP_BITS:
            raise InputError(
                f"the lookup index serves codes of at most {MAX_LOOKUP_BITS} bits, not {bits}: use mih, flat or ivf",
                setting="kind",
            )
        if self.kind in ("flat", "lookup"):
            return IndexConfig(self.kind, reason=self.reason)
        if self.kind == "mih":
            from hashindex.core.codes import MAX_SUBSTRING_BITS, default_mih_tables

            tables = self.tables or default_mih_tables(bits, n)
            if not -(-bits // MAX_SUBSTRING_BITS) <= tables <= bits:
                raise InputError(
                    f"tables must be between {-(-bits // MAX_SUBSTRING_BITS)} and {bits} for {bits}-bit codes, got {tables}",
                    setting="tables",
                )
            return IndexConfig("mih", tables=int(tables), reason=self.reason)
        nlist = self.nlist or int(max(1, min(65536, round(4 * np.sqrt(n)), n // 39)))
        if nlist < 1 or nlist > n:
            raise InputError(f"nlist must be between 1 and the number of items ({n}), got {nlist}", setting="nlist")
        return IndexConfig("ivf", nlist, check_nprobe(self.nprobe or max(1, nlist // 16), nlist), reason=self.reason)

    def to_manifest(self) -> dict:
        """The resolved parameters as the manifest records them (unset ones left out)."""
        keep = ("kind", "nlist", "nprobe", "tables", "reason")
        return {k: getattr(self, k) for k in keep if getattr(self, k) is not None or k in ("kind", "nlist", "nprobe")}


def check_nprobe(nprobe, nlist: int) -> int:
    """Raises InputError unless ``1 <= nprobe <= nlist``."""
    if isinstance(nprobe, bool) or int(nprobe) != nprobe or not 1 <= nprobe <= nlist:
        raise InputError(f"nprobe must be between 1 and nlist ({nlist}), got {nprobe}", setting="nprobe")
    return int(nprobe)


@dataclass(frozen=True)
class BenchConfig:
    """What a bench run measures (defaults: the full report).

    ``images``: an image source (as ``embed`` takes it) whose first ``images_limit`` images the
    pipeline-speed section embeds with the database's backbone and views (none: the embedding
    figures are not measured). ``rss_min_items``: the smallest synthetic scale whose flat index's
    RSS growth is measured (in a fresh process); smaller ones report faiss's sizes only.
    """

    methods: tuple[BenchMethod, ...] = BENCH_METHODS
    bits: tuple[int, ...] = (16, 32, 64, 128)
    topk: int = 1000
    rerank: int = 4
    rerank_queries: int = 1000
    epochs: int | None = None  # None: the fit's automatic schedule (a floor on optimiser steps)
    seeds: tuple[int, ...] = ()  # extra seeds for the learned methods (mean / min / std)
    targets: TargetKind = "codebook"  # supervised CroVCA targets (FitConfig.targets)
    hashcoder: HashcoderSize = "small"
    device: Device = "auto"
    seed: int = 0
    nprobes: tuple[int, ...] = (1, 4, 16)
    speed_k: int = 100
    speed_queries: int = 1000
    latency_queries: int = 200
    scales: tuple[int, ...] = (1_000_000,)
    float_scale: int = 1_000_000
    images: str | None = None
    images_limit: int = 512
    rss_min_items: int = 1_000_000
    ivf_nlist: int = 0  # synthetic scales: also IVF with this many lists (0: none)

    def validate(self) -> None:
        if self.ivf_nlist < 0:
            raise InputError(f"--synthetic-ivf must be >= 0, got {self.ivf_nlist}")
        if self.images_limit < 1:
            raise InputError(f"--images-limit must be positive, got {self.images_limit}")
        for m in self.methods:
            if m not in BENCH_METHODS:
                raise InputError(f"unknown method {m!r}: use {', '.join(BENCH_METHODS)}")
        for b in self.bits:
            check_bits(b, MIN_PROBE_BITS)
        if self.targets not in TARGETS:
            raise InputError(f"unknown targets {self.targets!r}: use one of {', '.join(TARGETS)}")
        if self.topk < 1 or self.rerank < 1 or (self.epochs is not None and self.epochs < 1):
            raise InputError("topk, rerank and epochs must be positive")


KeepRule = Literal["first", "last", "largest", "smallest"]
KEEP_RULES: tuple[str, ...] = get_args(KeepRule)


@dataclass(frozen=True)
class DedupConfig:
    """Options of near-duplicate detection (``hashindex dedup``).

    ``radius``: the Hamming radius of candidate pairs, as a fraction of the code length
    (``radius_bits`` overrides it in bits); ``min_cosine``: the float cosine that confirms a
    candidate pair; ``min_pixels``: the pixel agreement that confirms it too, when its cosine is
    lower (the correlation of the two images' 16 x 16 grayscale thumbnails, either mirrored:
    re-encoded, resized, brightened and mirrored copies; see :mod:`hashindex.dedup.pixels`;
    None: cosine only). Their defaults were chosen on the near-duplicate benchmark
    (benchmarks/dedup.py, BENCHMARKS.md "Near-duplicates"). ``keep``: which item of a group stays
    (``first``/``last`` by id, ``largest``/``smallest`` by file size). ``max_pairs``: the
    candidate pairs a run may hold (None: no limit); past it the run stops with an error that
    names the radius (``serve`` sets it: one request must not hold the machine's memory).
    """

    # 10 of 64 bits (the default code length): 0.956 of the recall of cosine-or-pixels over all
    # pairs at worst (0.89 at 1/8); 12 bits keep 0.996 but find 2.3x the candidate pairs (2.7x the
    # time at 1M codes). 128-bit codes need 0.1875 for the same 0.95.
    radius: float = 0.15625
    radius_bits: int | None = None
    min_cosine: float = 0.94  # precision >= 0.99 on pairs and groups in every run of the benchmark
    min_pixels: float | None = 0.994  # with min_cosine 0.94: precision >= 0.99 in every run
    keep: KeepRule = "first"
    max_pairs: int | None = None

    def radius_for(self, bits: int) -> int:
        """The radius in bits for codes of ``bits`` bits.

        Raises:
            InputError: a radius out of range.
        """
        r = self.radius_bits if self.radius_bits is not None else int(round(self.radius * bits))
        if not 0 <= r <= bits // 2:
            raise InputError(f"radius must be between 0 and {bits // 2} bits, got {r}", setting="radius")
        if not -1.0 <= self.min_cosine <= 1.0:
            raise InputError(f"min_cosine must be between -1 and 1, got {self.min_cosine}", setting="min_cosine")
        if self.min_pixels is not None and not -1.0 <= self.min_pixels <= 1.0:
            raise InputError(f"min_pixels must be between -1 and 1, got {self.min_pixels}", setting="min_pixels")
        if self.keep not in KEEP_RULES:
            raise InputError(f"unknown keep rule {self.keep!r}: use {', '.join(KEEP_RULES)}", setting="keep")
        return r


@dataclass(frozen=True)
class ServeConfig:
    """Options and limits of the service.

    ``batch_wait_ms``: how long the first image query of a batch waits for others before the
    backbone runs (``max_batch`` 1 turns micro-batching off). ``poll_seconds``: how often the
    manifest's generation is checked for commits made by other processes. ``device`` (None:
    ``auto``) runs the backbone and a flat index's Hamming scan. ``images_root``: where the
    build's images are now. Limits, per request: ``max_upload_bytes`` of body (a larger one is
    read and dropped up to ``drain_bytes``, then answered 413), ``max_files`` files (a search
    takes one image), ``max_image_pixels`` per image and ``max_request_pixels`` in all (checked
    from the headers before decoding), ``request_timeout_s`` of work; ``decode_slots`` image
    requests decode and embed at once and ``decode_queue`` more wait, the rest get 503 with
    Retry-After; ``max_connections`` open connections (uvicorn answers 503 beyond);
    ``max_duplicate_pairs`` candidate pairs held by ``GET /duplicates`` (a larger radius is
    answered 400: 10M pairs is about 320 MB at the join's peak).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    allow_writes: bool = False
    token: str | None = None
    weights: str | None = None
    device: Device | None = None
    images_root: str | None = None
    verify: bool = True
    max_upload_bytes: int = 16 << 20
    drain_bytes: int = 64 << 20
    max_files: int = 16
    max_image_pixels: int = 40_000_000
    max_request_pixels: int = 80_000_000
    request_timeout_s: float = 60.0
    decode_slots: int = 2
    decode_queue: int = 8
    max_connections: int = 256
    max_k: int = 1000
    max_duplicate_pairs: int = 10_000_000
    max_batch: int = 32
    batch_wait_ms: float = 5.0
    poll_seconds: float = 0.5
    search_threads: int = 1  # faiss OpenMP threads per search: concurrency comes from the requests
    search_workers: int = 2  # searches running at once
