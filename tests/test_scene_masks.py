"""Mask sources on REAL scenes: nodata fill, QA bits, mask rasters, vector polygons, SLC-off
detection, dilation; windowed reads equal whole-scene reads (halo handling)."""
from __future__ import annotations

import cv2
import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.warp import transform_geom
from rasterio.windows import Window
from shapely.geometry import box, shape

from inpaint_support import LT05, SLC_A, SLC_B, real_gap_mask, stack_scene
from pipeline.qa import qa_cloud_mask
from pipeline.raster_io import inspect_scene, open_scene
from pipeline.scene_masks import (MaskSource, SceneMasker, SceneMaskError, mask_source_from_options,
                                  whole_scene_masks)
from pipeline.scenes import get_scene


def _windowed(info, source, step=200):
    """Assemble the mask from windows (the streaming path) to compare with the whole-scene read."""
    hole = np.zeros(info.shape, bool)
    with SceneMasker(info, source) as masker, open_scene(info) as src:
        for r in range(0, info.height, step):
            for c in range(0, info.width, step):
                win = Window(c, r, min(step, info.width - c), min(step, info.height - r))
                hole[r:r + win.height, c:c + win.width] = masker.read(src, win).hole
    return hole


def test_default_nodata_mask_is_the_real_gap_mask(tmp_path):
    info = inspect_scene(stack_scene(SLC_A, tmp_path / "a.tif"))
    masks = whole_scene_masks(info)
    np.testing.assert_array_equal(masks.hole, real_gap_mask(SLC_A))
    np.testing.assert_array_equal(masks.unknown, masks.hole)


def test_nodata_value_and_internal_mask(tmp_path):
    src_path = stack_scene(SLC_A, tmp_path / "a.tif", nodata=0)
    np.testing.assert_array_equal(whole_scene_masks(inspect_scene(src_path)).hole, real_gap_mask(SLC_A))
    # Same pixels as a GDAL internal (per-dataset) mask, with the data under it NOT zero.
    gaps = real_gap_mask(SLC_A)
    with rasterio.open(src_path) as src:
        data, profile = src.read(), src.profile
    profile.update(nodata=None)
    internal = tmp_path / "internal.tif"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(internal, "w", **profile) as dst:
        dst.write(np.where(gaps[None], 77, data).astype(np.uint8))
        dst.write_mask(~gaps)
    info = inspect_scene(internal)
    assert info.has_internal_mask
    np.testing.assert_array_equal(whole_scene_masks(info).hole, gaps)


def test_qa_cloud_shadow_mask_with_dilate_windowed_equals_whole(tmp_path):
    entry = get_scene(LT05)
    info = inspect_scene(stack_scene(LT05, tmp_path / "lt5.tif"))
    source = MaskSource(kind="qa", path=entry.path(entry.qa), qa_kind="c1_bqa", dilate=3)
    with rasterio.open(entry.path(entry.qa)) as q:
        qa = q.read(1)
    with rasterio.open(info.path) as s:
        fill = (s.read() == 0).any(axis=0)
    expected = cv2.dilate((qa_cloud_mask(qa, "c1_bqa") | fill).astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    whole = whole_scene_masks(info, source).hole
    np.testing.assert_array_equal(whole, expected)
    assert 0.15 < whole.mean() < 0.6  # real cloud + shadow (SOURCES.md: 10.5 % + 11.5 %), grown
    np.testing.assert_array_equal(_windowed(info, source), whole)


def test_mask_raster_same_grid_and_reprojected(tmp_path):
    entry = get_scene(SLC_A)
    info = inspect_scene(stack_scene(SLC_A, tmp_path / "a.tif", nodata=None))
    gap_tif = entry.path(entry.gap_mask)
    same = whole_scene_masks(info, MaskSource(kind="raster", path=gap_tif)).hole
    np.testing.assert_array_equal(same, real_gap_mask(SLC_A))
    # The same real mask warped to another grid (EPSG:32613, 45 m) is refused ... then accepted
    # when reprojection is asked for explicitly, landing back on the stripes.
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    with rasterio.open(gap_tif) as g:
        dst_t, w, h = calculate_default_transform(g.crs, "EPSG:32613", g.width, g.height, *g.bounds, resolution=20)
        warped = np.zeros((h, w), np.uint8)
        reproject(g.read(1), warped, src_transform=g.transform, src_crs=g.crs, dst_transform=dst_t,
                  dst_crs="EPSG:32613", resampling=Resampling.nearest)
    other = tmp_path / "other_grid.tif"
    with rasterio.open(other, "w", driver="GTiff", width=w, height=h, count=1, dtype="uint8",
                       crs="EPSG:32613", transform=dst_t) as dst:
        dst.write(warped, 1)
    with pytest.raises(SceneMaskError, match="another grid"):
        with SceneMasker(info, MaskSource(kind="raster", path=other)):
            pass
    back = whole_scene_masks(info, MaskSource(kind="raster", path=other, reproject=True)).hole
    truth = real_gap_mask(SLC_A)
    iou = (back & truth).sum() / (back | truth).sum()
    assert iou > 0.6, iou


@pytest.mark.parametrize("suffix", [".geojson", ".gpkg"])
def test_vector_polygons_rasterised_in_scene_crs(tmp_path, suffix):
    """Polygons given in lon/lat are reprojected to the scene's UTM grid and rasterised."""
    info = inspect_scene(stack_scene(LT05, tmp_path / "lt5.tif"))
    t = info.transform
    px_box = box(t.c + 100 * t.a, t.f + 300 * t.e, t.c + 200 * t.a, t.f + 250 * t.e)  # cols 100-200, rows 250-300
    lonlat = shape(transform_geom(info.crs, "EPSG:4326", px_box.__geo_interface__))
    path = tmp_path / f"holes{suffix}"
    gpd.GeoDataFrame({"name": ["cloud"]}, geometry=[lonlat], crs="EPSG:4326").to_file(path)
    source = MaskSource(kind="vector", path=path)
    hole = whole_scene_masks(info, source).hole
    with rasterio.open(info.path) as s:
        fill = (s.read() == 0).any(axis=0)
    poly = hole & ~fill
    rows, cols = np.nonzero(poly)
    assert abs(rows.min() - 250) <= 1 and abs(rows.max() - 299) <= 1
    assert abs(cols.min() - 100) <= 1 and abs(cols.max() - 199) <= 1
    assert abs(poly.sum() - 100 * 50) < 300
    np.testing.assert_array_equal(_windowed(info, source, step=96), hole)


def test_slc_off_detection_excludes_edge_wedges(tmp_path):
    """4b: fill wedges along all edges + real stripes near the east edge."""
    info = inspect_scene(stack_scene(SLC_B, tmp_path / "b.tif"))
    masks = whole_scene_masks(info, MaskSource(kind="slc_off"))
    gaps = real_gap_mask(SLC_B)
    assert not (masks.hole & ~gaps).any()  # only invalid pixels are ever detected
    np.testing.assert_array_equal(masks.unknown, gaps)  # every invalid pixel stays unknown to the model
    # Wedge interiors: invalid pixels farther than the closing radius (8) from any valid pixel.
    core = cv2.erode(gaps.astype(np.uint8), np.ones((19, 19), np.uint8), borderType=cv2.BORDER_REPLICATE) > 0
    assert core.sum() > 0.5 * gaps.sum()
    assert not masks.hole[core].any()  # the edge fill wedges stay unfilled
    stripes = gaps & ~cv2.dilate(core.astype(np.uint8), np.ones((41, 41), np.uint8)).astype(bool)
    assert stripes.sum() > 500 and masks.hole[stripes].mean() > 0.9  # the stripes were found (~92 %)
    np.testing.assert_array_equal(_windowed(info, MaskSource(kind="slc_off")), masks.hole)


def test_mask_options_are_exclusive(tmp_path):
    with pytest.raises(SceneMaskError, match="choose one mask source"):
        mask_source_from_options(mask=tmp_path / "a.tif", slc_off=True)
    assert mask_source_from_options(qa=tmp_path / "q.tif", qa_kind="c1_bqa", dilate=2).kind == "qa"
    with pytest.raises(ValueError, match="dilate"):
        MaskSource(dilate=-1)


def test_all_bands_read_gives_each_bands_own_invalid_pixels(tmp_path):
    """Real Olinda B3,B2,B1,B4 with the NIR's gaps one column off the RGB gaps: the hole follows
    the model bands, each band's own invalid pixels are its own; windowed = whole scene."""
    from models.scene_demo import real_gap_pattern

    entry = get_scene("LE07_OLINDA_STARS")
    with rasterio.open(entry.path(entry.files[0])) as s:
        data, profile = s.read([3, 2, 1, 4]), s.profile
    hole = real_gap_pattern(*data.shape[1:])
    nir_hole = np.roll(hole, 1, axis=1)
    data[:3, hole] = 0
    data[3, nir_hole] = 0
    profile.update(count=4, nodata=0)
    path = tmp_path / "b3214.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    info = inspect_scene(path)
    assert info.bands == (1, 2, 3) and info.other_bands == (4,) and info.alpha_band is None
    with SceneMasker(info) as masker, open_scene(info) as src:
        whole = masker.read(src, Window(0, 0, info.width, info.height), all_bands=True)
        part = masker.read(src, Window(0, 100, info.width, 50), all_bands=True)
    np.testing.assert_array_equal(whole.hole, hole)
    np.testing.assert_array_equal(whole.band_invalid[3], nir_hole)
    np.testing.assert_array_equal(whole.band_invalid[:3], np.broadcast_to(hole, (3, *hole.shape)))
    np.testing.assert_array_equal(whole.all_stored, data)
    np.testing.assert_array_equal(part.band_invalid, whole.band_invalid[:, 100:150])
    np.testing.assert_array_equal(part.all_stored, data[:, 100:150])
