"""A folder of images to a searchable index in one call: embed → fit the probe → build, each
stage's artifact kept in the output folder (``embeddings.h5``, ``probe/``, ``index/``) so a
re-run resumes where it stopped, and ``refit`` refits the probe and rebuilds only.

Defaults come from the collection: 2 augmented views per image (what CroVCA trains on), the
probe's default code length and training length (a floor of optimiser steps measured to keep
the codes' quality on small collections: BENCHMARKS.md), and an index kind chosen by measurement.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from hashindex.api.pipeline import embed, fit_probe, project_paths, write_index_folder
from hashindex.core.config import EmbedConfig, FitConfig, IndexConfig
from hashindex.core.errors import InputError

logger = logging.getLogger(__name__)
VIEWS = 2  # cached augmented views per image: CroVCA's pairs are drawn among them and the eval view


@dataclass(frozen=True)
class Plan:
    """What ``run_index`` will do, said in one line before it starts."""

    images: int
    views: int
    bits: int
    steps: str
    kind: str
    backbone: str

    def describe(self) -> str:
        return (
            f"{self.images} images: backbone {self.backbone}, {self.views} augmented views each, {self.bits}-bit "
            f"CroVCA codes ({self.steps}), index {self.kind}"
        )


def plan_for(n: int, embed_cfg: EmbedConfig, fit_cfg: FitConfig, index_cfg: IndexConfig) -> Plan:
    """The defaults chosen for a collection of n images (see the module docstring)."""
    from hashindex.probe.fit import resolve_epochs

    epochs = resolve_epochs(n, fit_cfg)
    steps = epochs * -(-n // fit_cfg.batch_size)
    size = f" at {embed_cfg.image_size} px" if embed_cfg.image_size else ""
    return Plan(
        n, embed_cfg.views, fit_cfg.bits, f"{epochs} epochs, {steps} steps", index_cfg.kind, embed_cfg.model + size
    )


def run_index(
    source,
    out,
    *,
    embed_config: EmbedConfig | None = None,
    fit_config: FitConfig | None = None,
    index_config: IndexConfig | None = None,
    refit: bool = False,
    metadata=None,
    progress: bool = False,
    say=logger.info,
    **source_options,
) -> Path:
    """Embed, fit and build ``source`` into the folder ``out`` (see the module docstring).

    Args:
        source: a folder of images (class subfolders give labels), a list file, an IDX folder or
            ``fashion-mnist``.
        out: the output folder (created; a re-run resumes in it).
        embed_config, fit_config, index_config: options of each stage (views default to 2).
        refit: fit the probe again and rebuild the index (the embeddings are kept).
        metadata: a sidecar of item metadata keyed by name (see ``build --metadata``).
        progress: show progress bars.
        say: where the one-line plan and each stage's news go.
        source_options: ``split``, ``root``, ``data_dir``, ``limit`` of the source.

    Returns:
        ``out``; :func:`hashindex.open_index` opens it.

    Raises:
        InputError: an empty source, an output that is not a folder of this kind, an index holding
            items added since the build when ``refit`` asks to rebuild it.
    """
    from hashindex.embedding.sources import open_source

    out = Path(out)
    if out.exists() and (
        not out.is_dir()
        or any(
            p.name
            not in ("embeddings.h5", "embeddings.h5.partial", "embeddings.h5.lock", "probe", "index", "index.lock")
            and not p.name.startswith(".")
            for p in out.iterdir()
        )
    ):
        raise InputError(f"{out} exists and holds other files: choose a new folder (or one made by `hashindex index`)")
    out.mkdir(parents=True, exist_ok=True)
    paths = project_paths(out)
    src = open_source(str(source), **source_options)
    ecfg = embed_config or EmbedConfig(views=VIEWS)
    fcfg, icfg = fit_config or FitConfig(), index_config or IndexConfig()
    say(plan_for(len(src), ecfg, fcfg, icfg).describe())
    summary = embed(src, paths["embeddings"], ecfg, progress=progress)
    say(summary.describe())
    if refit and paths["index"].exists():
        _check_refit(paths["index"])
        shutil.rmtree(paths["index"])
        shutil.rmtree(paths["probe"], ignore_errors=True)
    if not paths["probe"].exists():
        probe = fit_probe(paths["embeddings"], paths["probe"], fcfg, verify=False, progress=progress)
        say(f"fitted {probe.bits}-bit {probe.method} probe in {probe.meta['fit_seconds']:.1f}s")
    if not paths["index"].exists():
        written = write_index_folder(
            paths["embeddings"], paths["probe"], paths["index"], icfg, verify=False, metadata=metadata
        )
        say(f"built {written}")
    return out


def _check_refit(index: os.PathLike) -> None:
    """Refuse to rebuild an index that holds items added since its build (they would be lost)."""
    from hashindex.index.manifest import Manifest
    from hashindex.live.commits import live_state

    state = live_state(Manifest.read(index)[0])
    if state.added_total:
        raise InputError(
            f"{index} holds {state.added_total} items added since it was built, which a rebuild from the embeddings "
            "would lose: put their images in the source folder and index it into a new folder"
        )
