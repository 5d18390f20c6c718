"""Streaming readers of embedding arrays written by other tools: ``.npy``, ``.npz``, parquet, HDF5.

Every reader opens its file, checks what it can from the header (shape, dtype, size) and then
yields rows in chunks, so memory stays bounded by one chunk whatever the file's size:

- ``.npy`` through ``np.load(mmap_mode="r")`` (a truncated file fails when mapped);
- ``.npz`` member by member through the zip stream and the ``.npy`` header, rows read as bytes
  (compressed members too; never a whole member in memory);
- parquet through ``pyarrow.parquet.ParquetFile.iter_batches`` over the wanted columns only;
- HDF5 datasets (``file.h5:/path``) through h5py slices.

A source string names one file; ``file.h5:/group/dataset`` names a dataset of an HDF5 file and
``file.npz:member`` a member of an ``.npz`` (default: ``embeddings``, else the only 2-D member).
"""

from __future__ import annotations

import logging
import mmap
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from hashindex.core.errors import InputError

logger = logging.getLogger(__name__)

FORMATS = (".npy", ".npz", ".parquet", ".h5", ".hdf5")


def split_spec(spec: str) -> tuple[Path, str | None]:
    """``file.ext:inner`` → (file, inner); a plain path → (path, None)."""
    s = str(spec)
    for ext in (".h5", ".hdf5", ".npz"):
        i = s.find(ext + ":")
        if i >= 0:
            return Path(s[: i + len(ext)]), s[i + len(ext) + 1 :] or None
    return Path(s), None


class ArrayReader:
    """Rows of one 1-D or 2-D array in one file, streamed in chunks.

    Attributes:
        spec: the source string, used in every error message.
        rows: number of rows.
        shape: the array's shape (rows first).
    """

    spec: str
    rows: int
    shape: tuple

    def chunks(self, chunk: int) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def fail(self, why: str) -> InputError:
        return InputError(f"{self.spec}: {why}")


class _Npy(ArrayReader):
    def __init__(self, spec: str, path: Path):
        self.spec = spec
        try:
            self.arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as e:  # mmap length > file size: truncated; or an object array
            raise InputError(f"{spec}: cannot read as .npy (truncated or not a plain array): {e}") from None
        except OSError as e:
            raise InputError(f"{spec}: cannot read: {e}") from None
        self.shape, self.rows, self.dtype = self.arr.shape, (self.arr.shape[0] if self.arr.ndim else 0), self.arr.dtype

    def chunks(self, chunk: int):
        mm = getattr(self.arr, "_mmap", None)
        row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        # The map starts at the header's offset rounded down to the allocation granularity.
        lead = getattr(self.arr, "offset", 0) % mmap.ALLOCATIONGRANULARITY
        for s in range(0, self.rows, chunk):
            out = np.array(self.arr[s : s + chunk])
            if mm is not None and hasattr(mm, "madvise"):
                # Pages already copied leave this process's RSS (they stay in the page cache):
                # without this, RSS grows by the size of every shard read.
                done = (lead + (s + len(out)) * row_bytes) // mmap.PAGESIZE * mmap.PAGESIZE
                if done:
                    mm.madvise(mmap.MADV_DONTNEED, 0, min(done, len(mm)))
            yield out


def _npy_header(fh) -> tuple:
    """Read a ``.npy`` magic and header from a stream: (shape, fortran_order, dtype)."""
    fmt = np.lib.format
    version = fmt.read_magic(fh)
    read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    return read(fh)


class _NpzMember(ArrayReader):
    """One ``.npz`` member read as a stream (the zip entry, then its ``.npy`` header and rows)."""

    def __init__(self, spec: str, path: Path, member: str | None):
        self.spec, self.path = spec, path
        try:
            with zipfile.ZipFile(path) as z:
                names = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
                self.headers = {n: self._header(z, n) for n in names}
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise InputError(f"{spec}: cannot read as .npz (truncated or damaged?): {e}") from None
        if member is None:
            two_d = [n for n, (shape, _, _) in self.headers.items() if len(shape) == 2]
            member = "embeddings" if "embeddings" in self.headers else (two_d[0] if len(two_d) == 1 else None)
            if member is None:
                raise InputError(
                    f"{spec}: name the embeddings member as {path}:MEMBER (members: {', '.join(self.headers)})"
                )
        if member not in self.headers:
            raise InputError(f"{spec}: no member {member!r} (members: {', '.join(self.headers)})")
        self.member = member
        self.shape, self.dtype, self.fortran = self.headers[member]
        self.rows = self.shape[0] if self.shape else 0
        if self.fortran and len(self.shape) > 1:
            raise InputError(f"{spec}: member {member} is stored in Fortran order; save it C-contiguous")

    @staticmethod
    def _header(z: zipfile.ZipFile, name: str):
        with z.open(name + ".npy") as fh:
            shape, fortran, dtype = _npy_header(fh)
        if dtype.hasobject:
            raise ValueError(f"member {name} holds Python objects (needs pickle)")
        return shape, dtype, fortran

    def member_chunks(self, member: str, chunk: int):
        shape, dtype, _ = self.headers[member]
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        with zipfile.ZipFile(self.path) as z, z.open(member + ".npy") as fh:
            _npy_header(fh)
            for s in range(0, shape[0], chunk):
                m = min(chunk, shape[0] - s)
                buf = fh.read(m * row_bytes)
                if len(buf) != m * row_bytes:
                    raise self.fail(
                        f"member {member} is truncated at row {s + len(buf) // max(1, row_bytes)} of {shape[0]}"
                    )
                yield np.frombuffer(buf, dtype=dtype).reshape((m,) + tuple(shape[1:]))

    def chunks(self, chunk: int):
        try:
            yield from self.member_chunks(self.member, chunk)
        except (zipfile.BadZipFile, OSError, EOFError) as e:  # a damaged deflate stream or CRC
            raise self.fail(f"damaged .npz: {e}") from None


class _Hdf5(ArrayReader):
    def __init__(self, spec: str, path: Path, inner: str | None):
        import h5py

        self.spec, self.path, self.inner = spec, path, inner or "/embeddings"
        try:
            with h5py.File(path, "r") as f:
                if self.inner not in f or not isinstance(f[self.inner], h5py.Dataset):
                    raise InputError(f"{spec}: {path} has no dataset {self.inner} (name it as {path}:/path/to/dataset)")
                d = f[self.inner]
                self.shape, self.dtype = d.shape, d.dtype
        except InputError:
            raise
        except Exception as e:
            raise InputError(f"{spec}: cannot read as HDF5 (truncated or damaged?): {e}") from None
        self.rows = self.shape[0] if self.shape else 0

    def chunks(self, chunk: int):
        import h5py

        try:
            with h5py.File(self.path, "r") as f:
                d = f[self.inner]
                for s in range(0, self.rows, chunk):
                    yield d[s : s + chunk]
        except Exception as e:
            raise self.fail(f"cannot read rows: {type(e).__name__}: {e}") from None


class _ParquetColumn(ArrayReader):
    """One column of a parquet file: fixed-size lists (or equal-length lists) of floats become
    2-D rows; scalar columns (names, labels) 1-D rows."""

    def __init__(self, spec: str, path: Path, column: str | None):
        import pyarrow.parquet as pq

        self.spec, self.path = spec, path
        try:
            self.pf = pq.ParquetFile(path)
        except Exception as e:
            raise InputError(f"{spec}: cannot read as parquet (truncated or damaged?): {e}") from None
        cols = self.pf.schema_arrow.names
        self.column = column or ("embedding" if "embedding" in cols else (cols[0] if len(cols) == 1 else None))
        if self.column not in cols:
            raise InputError(
                f"{spec}: no column {self.column!r} (columns: {', '.join(cols)}); name it with --embedding-column"
            )
        self.rows = self.pf.metadata.num_rows
        t = self.pf.schema_arrow.field(self.column).type
        self.list_size = getattr(t, "list_size", None)
        self.shape = (self.rows, self.list_size) if self.list_size else (self.rows,)
        self.dtype = None

    def chunks(self, chunk: int):
        import pyarrow as pa

        pos = 0
        for batch in self.pf.iter_batches(batch_size=chunk, columns=[self.column]):
            col = batch.column(0)
            if col.null_count:
                raise self.fail(f"column {self.column} has empty (null) values near row {pos}")
            if pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) or pa.types.is_large_list(col.type):
                flat = col.flatten().to_numpy(zero_copy_only=False)
                width = self.list_size or (len(flat) // max(1, len(col)))
                if len(flat) != width * len(col):
                    raise self.fail(f"column {self.column} holds lists of different lengths near row {pos}")
                out = flat.reshape(len(col), width)
            else:
                out = col.to_numpy(zero_copy_only=False)
            pos += len(col)
            yield out


def open_array(spec: str, column: str | None = None) -> ArrayReader:
    """Open one source string as a streaming array reader.

    Args:
        spec: ``x.npy``, ``x.npz[:member]``, ``x.parquet``, ``x.h5:/dataset``.
        column: for parquet, the column to read (default ``embedding``).

    Raises:
        InputError: a missing or unreadable file, an unknown format.
    """
    path, inner = split_spec(spec)
    if not path.is_file():
        raise InputError(f"{spec}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _Npy(spec, path)
    if suffix == ".npz":
        return _NpzMember(spec, path, inner)
    if suffix == ".parquet":
        return _ParquetColumn(spec, path, column)
    if suffix in (".h5", ".hdf5"):
        return _Hdf5(spec, path, inner)
    raise InputError(f"{spec}: unknown format {suffix!r}: use {', '.join(FORMATS)}")


class RowStream:
    """Reads rows across several readers in order, in pieces of any requested size."""

    def __init__(self, readers: list[ArrayReader], chunk: int):
        self.readers, self.chunk = readers, chunk
        self._it = self._gen()
        self._buf: list[np.ndarray] = []
        self._have = 0

    def _gen(self):
        for r in self.readers:
            got = 0
            for c in r.chunks(self.chunk):
                yield r, got, c
                got += len(c)
            if got != r.rows:
                raise r.fail(f"yielded {got} rows, its header says {r.rows} (truncated)")

    def take(self, m: int) -> tuple[np.ndarray, list[tuple[ArrayReader, int, int]]]:
        """The next ``m`` rows, and which reader each piece came from: ``(reader, offset, length)``."""
        pieces, origin = [], []
        while m > 0:
            if not self._buf:
                r, first, c = next(self._it)
                self._buf, self._reader, self._off = [c], r, first
            c = self._buf[0]
            part = c[:m]
            pieces.append(part)
            origin.append((self._reader, self._off, len(part)))
            self._off += len(part)
            m -= len(part)
            self._buf = [c[len(part) :]] if len(part) < len(c) else []
        return (np.concatenate(pieces) if len(pieces) > 1 else pieces[0]), origin
