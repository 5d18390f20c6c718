"""Assembling an embeddings file from the shards its writer committed (:mod:`hashindex.store.writer`)."""

from __future__ import annotations

import json

import numpy as np

from hashindex.core.errors import IntegrityError
from hashindex.core.version import __version__
from hashindex.store.resume import check_shard
from hashindex.store.schema import (
    DATASETS,
    FAIL,
    META,
    SCHEMA_VERSION,
    STR,
    as_str,
    attrs_digest,
    hash_failures,
    hash_meta,
    hash_rows,
    new_hashes,
    write_meta,
)


def assemble(f, writer, rows: int, meta: dict, item_meta=None) -> None:
    """Fill the open HDF5 file ``f`` from ``writer``'s committed shards: the datasets (contiguous,
    so readers can memory-map /embeddings), the failures, the attributes and, last, the
    checksums of all of them; ``item_meta`` (names -> metadata columns) adds ``/meta``.

    Raises:
        IntegrityError: a shard is corrupt (it and the later ones are removed).
    """
    dim = writer.dim
    f.create_dataset("embeddings", (rows, dim), "f4")
    if writer.views:
        f.create_dataset("views", (rows, writer.views, dim), "f4")
    if writer.label_dim:
        f.create_dataset("labels", (rows, writer.label_dim), "u1")
    f.create_dataset("names", (rows,), STR)
    f.create_dataset("source_index", (rows,), "i8")
    hashes = new_hashes(k for k in DATASETS if k in f)
    failures = []
    r = 0
    for i, s in enumerate(writer.shards):
        try:
            with np.load(s.path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
            check_shard(data, s, writer)
        except Exception as e:
            for later in writer.shards[i:]:
                later.path.unlink(missing_ok=True)
            raise IntegrityError(
                f"progress file {s.path} is corrupt ({type(e).__name__}: {e}); it was removed: "
                f"re-run the same command to embed items {s.start} onwards again"
            ) from None
        m = len(data["source_index"])
        for k in hashes if m else ():
            arr = data[k].tolist() if k == "names" else data[k]
            f[k][r : r + m] = arr
            hash_rows(hashes[k], k, arr)
        failures += list(
            zip(
                data["fail_index"].tolist(),
                data["fail_name"].tolist(),
                data["fail_error"].tolist(),
                data["fail_message"].tolist(),
            )
        )
        r += m
    fd = f.create_dataset("failures", (len(failures),), FAIL, maxshape=(None,), chunks=(64,))
    if failures:
        fd[:] = np.array(failures, dtype=FAIL)
    for k, v in writer.attrs.items():
        f.attrs[k] = v
    for k, v in meta.items():
        if v is not None:
            f.attrs[k] = v
    f.attrs["schema_version"] = SCHEMA_VERSION
    f.attrs["hashindex_version"] = __version__
    f.attrs["items_done"] = writer.committed_items
    f.attrs["rows"] = rows
    f.attrs["created"] = writer.created
    f.attrs["complete"] = True
    sums = {k: h.hexdigest() for k, h in hashes.items()}
    if item_meta is not None:
        cols = item_meta([as_str(v) for v in f["names"][()]])
        if cols:
            write_meta(f, cols)
            h = new_hashes([META])[META]
            hash_meta(h, f[META])
            sums[META] = h.hexdigest()
    fh = new_hashes(["failures"])["failures"]
    hash_failures(fh, failures)
    sums["failures"] = fh.hexdigest()
    sums["attrs"] = attrs_digest(f.attrs)
    f.attrs["checksums"] = json.dumps(sums, sort_keys=True)
