"""Raster I/O helpers: scene inspection, COG translation."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

from inpaint_support import SLC_A, real_gap_mask, stack_scene
from pipeline.raster_io import (RasterInputError, inspect_scene, parse_bands, to_cog)
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
    path = tmp_path / "int32.tif"
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=3, dtype="int32", crs="EPSG:32612",
                       transform=rasterio.transform.from_origin(0, 80, 10, 10)) as dst:
        dst.write(np.ones((3, 8, 8), np.int32))
    with pytest.raises(RasterInputError, match="int32"):
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


def test_nodata_rules_are_named(tmp_path):
    """Which pixels are the scene's own invalid ones, and the words the summary uses for it."""
    from pipeline.raster_io import describe_invalid, nodata_from_values

    untagged = stack_scene(SLC_A, tmp_path / "a.tif")  # real gaps as DN 0, no nodata tag
    info = inspect_scene(untagged)
    assert info.zero_fill and info.fill_value == 0 and describe_invalid(info).startswith("DN 0 in any of bands 1,2,3")
    off = inspect_scene(untagged, zero_is_nodata=False)
    assert not off.zero_fill and off.fill_value is None and "zeros are data" in describe_invalid(off)
    tagged = inspect_scene(stack_scene(SLC_A, tmp_path / "b.tif", nodata=0), zero_is_nodata=False)
    assert tagged.fill_value == 0 and describe_invalid(tagged).startswith("the nodata value 0 ")  # the tag wins
    values = np.array([[[0, 5, np.nan, np.inf]], [[1, 0, 2, 3]]], np.float32)
    np.testing.assert_array_equal(nodata_from_values(values, None), [[False, False, True, True]])
    np.testing.assert_array_equal(nodata_from_values(values[:, :, :2].astype(np.uint8), None), [[True, True]])
    np.testing.assert_array_equal(nodata_from_values(values[:, :, :2].astype(np.uint8), None, False), [[False, False]])


def test_copy_metadata_survives_the_cog(tmp_path):
    """Scale/offset, units, descriptions, band and dataset tags, colour interpretation and an
    internal mask of the streaming intermediate reach the COG."""
    from rasterio.enums import ColorInterp, MaskFlags

    from pipeline.raster_io import copy_metadata

    src = stack_scene(SLC_A, tmp_path / "a.tif")
    with rasterio.open(src, "r+") as ds:
        ds.scales, ds.offsets, ds.units = (2.75e-5,) * 3, (-0.2,) * 3, ("reflectance",) * 3
        ds.update_tags(1, wavelength="0.66")
        ds.update_tags(SENSOR="ETM+")
        ds.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
    mid = tmp_path / "mid.tif"
    with rasterio.open(src) as s:
        data = s.read()
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(mid, "w", **s.profile) as d:
            copy_metadata(s, d)
            d.write(data)
            d.write_mask(~real_gap_mask(SLC_A))
    cog = tmp_path / "cog.tif"
    to_cog(mid, cog)
    with rasterio.open(src) as a, rasterio.open(cog) as b:
        assert (b.scales, b.offsets, b.units, b.descriptions) == (a.scales, a.offsets, a.units, a.descriptions)
        assert b.tags(1)["wavelength"] == "0.66" and b.tags()["SENSOR"] == "ETM+" and b.colorinterp == a.colorinterp
        assert MaskFlags.per_dataset in b.mask_flag_enums[0]
        np.testing.assert_array_equal(b.read_masks(1) == 0, real_gap_mask(SLC_A))


def test_read_decimated_is_strided_full_resolution(tmp_path):
    """Every step-th pixel, read in strips (GDAL's out_shape reads are far slower on
    pixel-interleaved compressed files with a nodata value)."""
    from pipeline.raster_io import read_decimated

    src_path = stack_scene(SLC_A, tmp_path / "a.tif", nodata=0)
    with rasterio.open(src_path) as src:
        full, masks = src.read(), src.read_masks(1)
        for step in (1, 3, 7):
            np.testing.assert_array_equal(read_decimated(src, [3, 1], step, block_rows=100), full[[2, 0], ::step, ::step])
            np.testing.assert_array_equal(read_decimated(src, 1, step, masks=True, block_rows=50), masks[::step, ::step])
