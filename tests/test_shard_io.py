"""pipeline.shard_io: whole-shard reads/writes must be interchangeable with zarr's own, byte for byte."""
import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from pipeline.edges import edges_for_stored
from pipeline.prepare import EDGES_COMPRESSOR
from pipeline.shard_io import _layout, read_shard, write_shard
from pipeline.store import Radiometry, open_store


@pytest.fixture
def real(real_store):
    """(group opened r+, real images (N, 3, 256, 256), their edges (N, 1, 256, 256))."""
    g = open_store(real_store, "r+")
    images = g["images"][:]
    return g, images, edges_for_stored(images, Radiometry().to_unit)


def _edges_array(g, name, n, shard, compressor, index_location="end"):
    return g.create_array(name, shape=(n, 1, 256, 256), dtype="uint8", chunks=(1, 1, 256, 256),
                          shards={"shape": (shard, 1, 256, 256), "index_location": index_location},
                          fill_value=0, compressors=compressor)


def _files(g, name):
    root = g.store.root / name / "c"
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()} if root.exists() else {}


def test_read_shard_equals_zarr_on_real_images(real):
    g, images, _ = real
    assert _layout(g["images"]) is not None  # the store's own layout takes the fast path
    s = g["images"].shards[0]
    for k in range(-(-len(images) // s)):
        np.testing.assert_array_equal(read_shard(g["images"], k), images[k * s:(k + 1) * s])


@pytest.mark.parametrize("compressor,index_location", [(EDGES_COMPRESSOR, "end"), (ZstdCodec(level=1), "start"),
                                                       (None, "end")])
def test_write_shard_bytes_identical_to_zarr(real, compressor, index_location):
    g, _, edges = real
    n, s = len(edges) - 3, 4  # a partial last shard
    ours = _edges_array(g, "ours", n, s, compressor, index_location)
    ref = _edges_array(g, "ref", n, s, compressor, index_location)
    assert _layout(ours) is not None
    data = edges[:n].copy()
    data[1] = 0  # an empty patch: not stored (zarr's write_empty_chunks=False) ...
    data[s:2 * s] = 0  # ... and an all-empty shard: no shard object at all
    for k in range(-(-n // s)):
        write_shard(ours, k, data[k * s:(k + 1) * s])
        ref[k * s:(k + 1) * s] = data[k * s:(k + 1) * s]
    assert _files(g, "ours") == _files(g, "ref") and "1/0/0/0" not in _files(g, "ours")
    np.testing.assert_array_equal(ours[:], data)  # zarr reads what shard_io wrote
    for k in range(-(-n // s)):
        np.testing.assert_array_equal(read_shard(ref, k), data[k * s:(k + 1) * s])  # and vice versa


def test_rewrite_replaces_a_shard_and_unwritten_shards_read_as_fill(real):
    g, _, edges = real
    a = _edges_array(g, "e", 8, 4, EDGES_COMPRESSOR)
    np.testing.assert_array_equal(read_shard(a, 1), np.zeros((4, 1, 256, 256), np.uint8))
    write_shard(a, 0, edges[:4])
    write_shard(a, 0, edges[4:8])
    np.testing.assert_array_equal(a[:4], edges[4:8])


def test_other_layouts_fall_back_to_zarr(real):
    g, images, _ = real
    two_per_chunk = g.create_array("two", shape=(8, 3, 256, 256), dtype="uint8", chunks=(2, 3, 256, 256),
                                   shards=(4, 3, 256, 256), compressors=BloscCodec(cname="zstd", clevel=1))
    unsharded = g.create_array("plain", shape=(8, 3, 256, 256), dtype="uint8", chunks=(4, 3, 256, 256))
    for arr in (two_per_chunk, unsharded):
        assert _layout(arr) is None
        write_shard(arr, 1, images[4:8])
        np.testing.assert_array_equal(arr[4:8], images[4:8])
        np.testing.assert_array_equal(read_shard(arr, 1), images[4:8])


def test_bad_input_and_corruption(real):
    g, _, edges = real
    a = _edges_array(g, "e", 6, 4, EDGES_COMPRESSOR)
    with pytest.raises(ValueError, match=r"shard 1 of /e needs shape \(2, 1, 256, 256\), got \(4, 1, 256, 256\)"):
        write_shard(a, 1, edges[:4])
    with pytest.raises(IndexError, match="shard 2 is outside /e"):
        read_shard(a, 2)
    write_shard(a, 0, edges[:4])
    shard_file = g.store.root / "e" / "c" / "0" / "0" / "0" / "0"
    blob = bytearray(shard_file.read_bytes())
    blob[-10] ^= 0xFF  # inside the index: its crc32c no longer matches
    shard_file.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="crc32c"):
        read_shard(zarr.open_array(g.store, path="e"), 0)


def test_uint16_patches_round_trip_like_zarr(real):
    g, images, _ = real
    scaled = images[:6].astype(np.uint16) * 257  # 16-bit reflectance-like values from real patches
    kw = dict(shape=(6, 3, 256, 256), dtype="uint16", chunks=(1, 3, 256, 256), shards=(4, 3, 256, 256))
    ours, ref = g.create_array("ours16", **kw), g.create_array("ref16", **kw)
    for k in range(2):
        write_shard(ours, k, scaled[k * 4:(k + 1) * 4])
    ref[:] = scaled
    assert _files(g, "ours16") == _files(g, "ref16")
    np.testing.assert_array_equal(read_shard(ref, 1), scaled[4:])
