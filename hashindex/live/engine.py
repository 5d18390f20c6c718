"""The engine of a snapshot's rows, by index kind: the base folder's own structures while the rows
are the base's, rebuilt from the codes after an edit (an IVF keeps its trained lists, edited)."""

from __future__ import annotations

from hashindex.index.faiss_access import flat_index
from hashindex.index.mih import MIHTables
from hashindex.search.engines import FlatEngine, IVFEngine, MIHEngine


def snapshot_engine(snap):
    """The engine for :class:`~hashindex.live.snapshot.Snapshot` ``snap``.

    ``snap.faiss_index`` is the base's index while the rows are the base's, None after an add or
    a remove (IVF: the base's lists edited to the rows, answering with ids)."""
    cfg = snap.base.manifest.index
    same_rows = snap.faiss_index is not None
    if cfg.kind == "ivf":
        return IVFEngine(snap.faiss_index, snap.codes, snap.ids, int(cfg.nprobe))
    if cfg.kind == "flat":
        return FlatEngine(snap.faiss_index if same_rows else flat_index(snap.codes), snap.codes)
    if cfg.kind == "mih":
        tables = (
            snap.base.tables if same_rows and snap.base.tables is not None else MIHTables.build(snap.codes, cfg.tables)
        )
        return MIHEngine(snap.codes, tables)
    return MIHEngine(snap.codes, MIHTables.build(snap.codes, 1), kind="lookup")  # lookup: one table, the whole code
