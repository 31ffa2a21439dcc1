"""Raster I/O helpers: scene inspection, COG translation, atomic outputs."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

from inpaint_support import SLC_A, stack_scene
from pipeline.raster_io import (AtomicOutputs, RasterInputError, inspect_scene, parse_bands, to_cog)
from pipeline.scenes import get_scene


def test_inspect_real_scene_and_band_selection():
    entry = get_scene("LE07_OLINDA_STARS")  # real 6-band Landsat 7 (B1 B2 B3 B4 B5 B7), 349 x 352
    path = entry.path(entry.files[0])
    info = inspect_scene(path, bands=(3, 2, 1))
    assert (info.width, info.height, info.count, info.dtype) == (349, 352, 6, "uint8")
    assert info.bands == (3, 2, 1) and info.crs.to_epsg() == 31985 and info.nodata is None
    with pytest.raises(RasterInputError, match=r"out of range: .* has bands 1..6"):
        inspect_scene(path, bands=(7, 2, 1))
    with pytest.raises(RasterInputError, match="3 bands are needed"):
        inspect_scene(path, bands=(3, 2))
    assert parse_bands("4,3,2") == (4, 3, 2) and parse_bands(None) is None
    with pytest.raises(RasterInputError, match="comma-separated"):
        parse_bands("red,green")


def test_unsupported_dtype_is_named(tmp_path):
    path = tmp_path / "int16.tif"
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=3, dtype="int16", crs="EPSG:32612",
                       transform=rasterio.transform.from_origin(0, 80, 10, 10)) as dst:
        dst.write(np.ones((3, 8, 8), np.int16))
    with pytest.raises(RasterInputError, match="int16"):
        inspect_scene(path)


def test_to_cog_keeps_grid_nodata_descriptions(tmp_path):
    src = stack_scene(SLC_A, tmp_path / "a.tif", nodata=0)
    dst = tmp_path / "a_cog.tif"
    to_cog(src, dst)
    valid, errors, _ = cog_validate(str(dst))
    assert valid, errors
    with rasterio.open(src) as a, rasterio.open(dst) as b:
        assert (b.crs, b.transform, b.nodata, b.descriptions) == (a.crs, a.transform, 0, ("B3", "B2", "B1"))
        assert b.compression.value == "DEFLATE" and b.overviews(1)
        np.testing.assert_array_equal(a.read(), b.read())


def test_atomic_outputs_commit_and_rollback(tmp_path):
    finals = [tmp_path / "out" / "x.tif", tmp_path / "out" / "x.stac.json"]
    with pytest.raises(RuntimeError):
        with AtomicOutputs(finals) as atomic:
            atomic.temp(finals[0]).write_text("partial")
            raise RuntimeError("boom")
    assert list((tmp_path / "out").iterdir()) == []
    with AtomicOutputs(finals) as atomic:
        for f in finals:
            atomic.temp(f).write_text(f.name)
        atomic.temp("scratch.tif").write_text("scratch")  # scratch files never reach the output dir
        atomic.commit()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x.stac.json", "x.tif"]
    assert finals[1].read_text() == "x.stac.json"
