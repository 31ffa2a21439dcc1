"""Whole-shard reads and writes of per-patch arrays, without zarr's per-chunk asyncio round trips.

The store's per-patch arrays (``images``, ``edges``) are Zarr v3 ``sharding_indexed`` arrays whose
inner chunk is ONE patch ``(1, *shape[1:])`` and whose shard is ``S`` patches along N. zarr-python
decodes/encodes each inner chunk as its own asyncio task plus a thread-pool hop, which for a
64-patch shard costs more CPU than the compression itself (profiled in bench/prepare.py:
~0.25 ms per patch on reads, ~0.3 ms on writes). A prepare task owns whole shards, so here one
shard is fetched / stored with ONE store call and its chunks are (de)compressed in a plain loop.

The bytes are exactly the Zarr v3 sharding format (spec: codecs/sharding-indexed/v1.0): inner
chunks back to back, then (or before them, ``index_location``) the index, ``(S, 1, .., 1, 2)``
little-endian uint64 ``(offset, nbytes)`` pairs, ``2**64 - 1`` for an empty chunk, followed by
its crc32c when the index codecs say so. Any zarr reader reads what is written here and vice
versa (tests/test_shard_io.py round-trips both ways). Supported inner codec chains: ``bytes``
followed by any of ``zstd``, ``blosc``, ``gzip``, ``crc32c``; anything else (another layout,
array-to-array codecs, a different zarr format) falls back to plain zarr indexing, same result.
Chunks equal to the fill value are not stored (zarr's default ``write_empty_chunks=False``), and
a shard with no stored chunk is deleted, as zarr does.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable

import numcodecs
import numpy as np
import zarr

try:  # zarr's own crc32c dependency
    import google_crc32c
except ImportError:  # pragma: no cover - zarr requires it for the crc32c codec
    google_crc32c = None

_EMPTY = np.uint64(2**64 - 1)
_BLOSC_SHUFFLE = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


class _Crc32c:
    """Zarr v3 ``crc32c`` bytes-to-bytes codec: 4 little-endian checksum bytes appended."""

    def encode(self, data: bytes | np.ndarray) -> bytes:
        data = bytes(data)
        return data + np.uint32(google_crc32c.value(data)).astype("<u4").tobytes()

    def decode(self, data: bytes | memoryview) -> bytes:
        data = bytes(data)
        body, stored = data[:-4], data[-4:]
        if np.uint32(google_crc32c.value(body)).astype("<u4").tobytes() != stored:
            raise ValueError("shard data fails its crc32c checksum (corrupt store?)")
        return body


def _bytes_codec(spec: dict[str, Any]) -> Any | None:
    """numcodecs equivalent of one Zarr v3 bytes-to-bytes codec (its JSON form), or None."""
    name, cfg = spec.get("name"), spec.get("configuration", {}) or {}
    if name == "zstd":
        return numcodecs.Zstd(level=int(cfg.get("level", 0)), checksum=bool(cfg.get("checksum", False)))
    if name == "blosc" and cfg.get("shuffle") in _BLOSC_SHUFFLE:
        return numcodecs.Blosc(cname=cfg["cname"], clevel=int(cfg["clevel"]), shuffle=_BLOSC_SHUFFLE[cfg["shuffle"]],
                               blocksize=int(cfg.get("blocksize", 0)), typesize=int(cfg.get("typesize", 1)))
    if name == "gzip":
        return numcodecs.GZip(level=int(cfg.get("level", 5)))
    if name == "crc32c" and google_crc32c is not None:
        return _Crc32c()
    return None


def _is_bytes(spec: dict[str, Any]) -> bool:
    endian = (spec.get("configuration") or {}).get("endian")
    return spec.get("name") == "bytes" and endian in (None, "little")


@dataclass(frozen=True)
class _ShardLayout:
    shard_patches: int
    patch_shape: tuple[int, ...]
    dtype: np.dtype
    fill_value: Any
    codecs: tuple[Any, ...]  # bytes-to-bytes, applied in this order when encoding
    index_codecs: tuple[Any, ...]
    index_at_start: bool

    @property
    def index_nbytes(self) -> int:
        return 16 * self.shard_patches + 4 * len(self.index_codecs)  # only crc32c is allowed there


def _layout(array: zarr.Array) -> _ShardLayout | None:
    """The shard layout of ``array`` if this module handles it, else None (use zarr)."""
    meta = array.metadata
    if getattr(meta, "zarr_format", None) != 3 or array.shards is None or len(meta.codecs) != 1:
        return None
    sharding = meta.codecs[0].to_dict()
    cfg = sharding.get("configuration", {})
    if sharding.get("name") != "sharding_indexed" or array.ndim < 1:
        return None
    if tuple(cfg.get("chunk_shape", ())) != (1, *array.shape[1:]) or tuple(array.shards[1:]) != tuple(array.shape[1:]):
        return None
    inner = [c.to_dict() for c in meta.codecs[0].codecs]
    index = [c.to_dict() for c in meta.codecs[0].index_codecs]
    dtype = np.dtype(array.dtype)
    if not inner or not _is_bytes(inner[0]) or not index or not _is_bytes(index[0]):
        return None
    if dtype.kind not in "biuf" or (dtype.itemsize > 1 and sys.byteorder != "little"):
        return None
    codecs = tuple(_bytes_codec(c) for c in inner[1:])
    index_codecs = tuple(_bytes_codec(c) for c in index[1:])
    if any(c is None for c in codecs) or any(not isinstance(c, _Crc32c) for c in index_codecs):
        return None
    return _ShardLayout(int(array.shards[0]), tuple(array.shape[1:]), dtype, array.fill_value, codecs,
                        index_codecs, cfg.get("index_location", "end") == "start")


def _shard_rows(array: zarr.Array, shard: int, s: int) -> tuple[int, int]:
    n = array.shape[0]
    start = shard * s
    if not 0 <= start < n:
        raise IndexError(f"shard {shard} is outside {array.name} ({n} patches, {s} per shard)")
    return start, min(start + s, n)


def _store_path(array: zarr.Array, shard: int):
    return array.store_path / array.metadata.encode_chunk_key((shard,) + (0,) * (array.ndim - 1))


def _run(coro_fn: Callable[[], Any]) -> Any:
    from zarr.core.sync import sync

    return sync(coro_fn())


def read_shard(array: zarr.Array, shard: int) -> np.ndarray:
    """Patches ``[shard * S, min((shard + 1) * S, N))`` of a patch-sharded array, as numpy."""
    layout = _layout(array)
    s = int(array.shards[0]) if array.shards is not None else int(array.chunks[0])
    start, stop = _shard_rows(array, shard, s)
    if layout is None:
        return np.asarray(array[start:stop])
    from zarr.core.buffer import default_buffer_prototype

    buf = _run(lambda: _store_path(array, shard).get(prototype=default_buffer_prototype()))
    out = np.empty((stop - start, *layout.patch_shape), layout.dtype)
    if buf is None:  # shard never written
        out[...] = layout.fill_value
        return out
    view = memoryview(buf.as_numpy_array())  # no copy of the (MB-sized) shard
    nbytes = layout.index_nbytes
    index_bytes: Any = view[:nbytes] if layout.index_at_start else view[len(view) - nbytes:]
    for codec in reversed(layout.index_codecs):
        index_bytes = codec.decode(index_bytes)
    index = np.frombuffer(index_bytes, "<u8").reshape(layout.shard_patches, 2)
    for i in range(stop - start):
        offset, length = index[i]
        if offset == _EMPTY:
            out[i] = layout.fill_value
            continue
        data: Any = view[int(offset):int(offset + length)]
        for codec in reversed(layout.codecs[1:]):
            data = codec.decode(data)
        dest = out[i].reshape(-1).view(np.uint8)  # the patch's bytes in ``out`` (C order, little-endian)
        if layout.codecs and not isinstance(layout.codecs[0], _Crc32c):
            layout.codecs[0].decode(data, out=dest)  # decompress straight into ``out``
        else:
            dest[:] = np.frombuffer(layout.codecs[0].decode(data) if layout.codecs else data, np.uint8)
    return out


def write_shard(array: zarr.Array, shard: int, data: np.ndarray) -> None:
    """Replace shard ``shard`` of a patch-sharded array with ``data`` (its patches, in order)."""
    layout = _layout(array)
    s = int(array.shards[0]) if array.shards is not None else int(array.chunks[0])
    start, stop = _shard_rows(array, shard, s)
    data = np.asarray(data)
    if data.shape != (stop - start, *array.shape[1:]):
        raise ValueError(f"shard {shard} of {array.name} needs shape {(stop - start, *array.shape[1:])}, "
                         f"got {data.shape}")
    if layout is None:
        array[start:stop] = data
        return
    data = np.ascontiguousarray(data, layout.dtype.newbyteorder("<"))
    fill = np.asarray(layout.fill_value, layout.dtype)
    index = np.full((layout.shard_patches, 2), _EMPTY, "<u8")
    chunks: list[bytes] = []
    offset = layout.index_nbytes if layout.index_at_start else 0
    for i in range(len(data)):
        if np.array_equiv(data[i], fill):  # zarr's write_empty_chunks=False
            continue
        encoded: Any = data[i]
        for codec in layout.codecs:
            encoded = codec.encode(encoded)
        encoded = bytes(encoded)
        index[i] = (offset, len(encoded))
        offset += len(encoded)
        chunks.append(encoded)
    path = _store_path(array, shard)
    if not chunks:
        _run(path.delete)
        return
    index_bytes = index.tobytes()
    for codec in layout.index_codecs:
        index_bytes = codec.encode(index_bytes)
    blob = b"".join([index_bytes, *chunks] if layout.index_at_start else [*chunks, index_bytes])
    from zarr.core.buffer import default_buffer_prototype

    _run(lambda: path.set(default_buffer_prototype().buffer.from_bytes(blob)))
