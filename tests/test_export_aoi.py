"""AOIs (GeoJSON via geopandas/shapely), stratified deterministic sampling, AOI bad input."""
from __future__ import annotations

import json

import google.oauth2.credentials
import pytest
import shapely

from pipeline.aoi import assign_splits, grid_cells, read_aois, to_utm
from pipeline.export import export_landsat
from pipeline.export_config import DEFAULT_AOI_DIR, ExportConfig, ExportError
from pipeline.sampling import interleave, shard_slices
from pipeline.sources.earthengine import EarthEngineSource


def test_bundled_aois_are_real_and_split():
    aois = read_aois(sorted(DEFAULT_AOI_DIR.glob("*.geojson")))
    names = {a.name for a in aois}
    assert "lt05_040028_20060706" in names and "madagascar_highlands" in names
    assert {a.split for a in aois} == {"train", "test"}
    zion = next(a for a in aois if a.name.startswith("lc08_038034"))
    assert zion.utm_epsg() == 32612 and 37.0 < zion.geometry.centroid.y < 37.6


def test_grid_cells_lie_inside_the_region_on_the_native_grid():
    aoi = next(a for a in read_aois([DEFAULT_AOI_DIR / "landsat7_areas.geojson"]) if a.name == "kansas_great_plains")
    region = to_utm(aoi.geometry, aoi.utm_epsg())
    cells = grid_cells(region, 30.0, 256, origin=(15.0, 15.0))
    assert len(cells) > 50
    for x, y in cells:
        assert region.contains(shapely.box(x, y - 7680, x + 7680, y))
        assert (x - 15.0) % 30 == 0 and (y - 15.0) % 30 == 0
    assert len(set(cells)) == len(cells)


def test_interleave_is_stratified_and_deterministic():
    strata = [[("a", i) for i in range(5)], [("b", i) for i in range(2)], [("c", i) for i in range(3)]]
    out = interleave(strata, seed=3)
    assert out == interleave(strata, seed=3) and len(out) == 10
    assert {s for s, _ in out[:3]} == {"a", "b", "c"}  # every prefix balanced across strata
    assert shard_slices(10, 4) == [(0, 4), (4, 8), (8, 10)]


def test_assign_splits_by_aoi():
    aois = read_aois(sorted(DEFAULT_AOI_DIR.glob("*.geojson")))
    free = [a.__class__(a.name, a.geometry, None) for a in aois]
    splits = assign_splits(free, seed=0, test_fraction=1 / 6)
    assert splits == assign_splits(free, seed=0, test_fraction=1 / 6)
    assert sum(v == "test" for v in splits.values()) == round(len(free) / 6)


def _ee_export(tmp_path, aoi_path):
    cfg = ExportConfig(source="earthengine", project="p", api_url="http://127.0.0.1:9", aois=[aoi_path],
                       out=tmp_path / "ee.zarr")
    token = google.oauth2.credentials.Credentials(token="t")
    return export_landsat(cfg, source=EarthEngineSource(cfg, credentials=token))


@pytest.mark.parametrize("text, message", [
    (None, "does not exist"),
    ("{not json", "not readable GeoJSON"),
    (json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": "void"}, "geometry": {"type": "Polygon", "coordinates": []}}]}),
     "empty geometry"),
    (json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": "line"},
         "geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}}]}), "empty geometry"),
    (json.dumps({"type": "FeatureCollection", "features": []}), "holds no features"),
])
def test_bad_aoi_files_are_refused_before_any_write(tmp_path, text, message):
    aoi = tmp_path / "aoi.geojson"
    if text is not None:
        aoi.write_text(text)
    with pytest.raises(ExportError, match=message):
        _ee_export(tmp_path, aoi)
    assert not (tmp_path / "ee.zarr").exists()
