"""EarthEngineSource on the GENUINE earthengine-api client against a fake EE REST server
(127.0.0.1) that answers from real bundled scenes; only the network boundary is faked."""
from __future__ import annotations

import json
import socket
import time

import google.oauth2.credentials
import numpy as np
import pytest
import shapely.geometry
import zarr

from fake_ee import FAKE_IMAGES, FakeEarthEngine
from fake_ee.server import footprint_lonlat, render_window
from pipeline.export import export_landsat
from pipeline.export_config import ExportConfig, ExportError
from pipeline.sources.base import PatchRequest
from pipeline.sources.earthengine import EarthEngineError, EarthEngineSource

TOKEN = google.oauth2.credentials.Credentials(token="test-token")
ZION = "LC08_038034_20150818_ZION"
ITAIPU = "LC08_224078_20200518_ITAIPU"


def write_aois(path, scenes=((ZION, "train"), (ITAIPU, "test"))):
    feats = [{"type": "Feature", "properties": {"name": sid.split("_")[-1].lower(), "split": split},
              "geometry": shapely.geometry.mapping(footprint_lonlat(sid))} for sid, split in scenes]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return path


def ee_config(tmp_path, url, **kw) -> ExportConfig:
    aoi = write_aois(tmp_path / "aois.geojson")
    base = dict(source="earthengine", project="test-project", api_url=url, aois=[aoi], out=tmp_path / "ee.zarr",
                backoff_s=0.01, timeout_s=2.0, max_attempts=5, shard_patches=4)
    return ExportConfig(**{**base, **kw})


def a_request(scene_id=ZION) -> PatchRequest:
    asset = next(a for a, v in FAKE_IMAGES.items() if v[0] == scene_id)
    from pipeline.scenes import read_scene

    s = read_scene(scene_id)
    x, y = s.transform @ (300, 300)
    return PatchRequest(asset=asset, scene_id=asset.rsplit("/", 1)[1], epsg=s.epsg,
                        transform=(30.0, 0.0, float(x), 0.0, -30.0, float(y)))


def test_compute_pixels_genuine_client_returns_scene_window(tmp_path):
    with FakeEarthEngine() as fake:
        src = EarthEngineSource(ee_config(tmp_path, fake.url, max_cloud_fraction=1.0), credentials=TOKEN)
        req = a_request()
        patch = src.fetch(req)
        grid = src._params(req)["grid"]
        expected = render_window(req.asset, ["B3", "B2", "B1"], grid)
    assert patch.skip is None and patch.pixels.dtype == np.uint16 and patch.pixels.shape == (3, 256, 256)
    want = np.stack([np.rint(expected[b].astype(np.float64) * 10000) for b in ("B3", "B2", "B1")]).astype(np.uint16)
    np.testing.assert_array_equal(patch.pixels, want)
    assert patch.pixels.max() > 1000  # real texture, TOA x 1e4
    assert fake.counts["discovery"] >= 1 and fake.counts["algorithms"] >= 1 and fake.counts["computePixels"] == 1
    assert fake.auth_headers == ["Bearer test-token"]


def test_transient_errors_are_retried_then_succeed(tmp_path):
    with FakeEarthEngine(faults=["429", "503", "timeout", "truncated"], timeout_sleep_s=2.5) as fake:
        src = EarthEngineSource(ee_config(tmp_path, fake.url, timeout_s=0.5, max_cloud_fraction=1.0), credentials=TOKEN)
        patch = src.fetch(a_request())
    assert patch.pixels is not None
    assert fake.counts["computePixels"] == 5  # 4 faults + the success


def test_persistent_503_gives_clear_error_after_bounded_attempts(tmp_path):
    with FakeEarthEngine(always="503") as fake:
        src = EarthEngineSource(ee_config(tmp_path, fake.url, max_attempts=3), credentials=TOKEN)
        with pytest.raises(EarthEngineError, match="after 3 attempts"):
            src.fetch(a_request())
    assert fake.counts["computePixels"] == 3


def test_truncated_bodies_exhaust_attempts(tmp_path):
    with FakeEarthEngine(always="truncated") as fake:
        src = EarthEngineSource(ee_config(tmp_path, fake.url, max_attempts=2), credentials=TOKEN)
        with pytest.raises(EarthEngineError, match="after 2 attempts"):
            src.fetch(a_request())
    assert fake.counts["computePixels"] == 2


def test_service_account_key_headless_auth(tmp_path, monkeypatch):
    """A JSON key whose token_uri is the fake server: the genuine google-auth JWT flow runs."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    with FakeEarthEngine() as fake:
        key = tmp_path / "key.json"
        key.write_text(json.dumps({"type": "service_account", "project_id": "test-project", "private_key_id": "k1",
                                   "private_key": pem, "client_email": "svc@test-project.iam.gserviceaccount.com",
                                   "client_id": "1", "token_uri": f"{fake.url}/token"}))
        monkeypatch.setenv("EDGEFILL_EE_KEY", str(key))
        src = EarthEngineSource(ee_config(tmp_path, fake.url, max_cloud_fraction=1.0))
        assert src.fetch(a_request()).pixels is not None
    assert fake.counts["token"] >= 1 and fake.auth_headers == ["Bearer fake-token"]


def test_missing_credentials_say_what_to_set(tmp_path, monkeypatch):
    for var in ("EDGEFILL_EE_KEY", "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(var, raising=False)
    cfg = ee_config(tmp_path, "http://127.0.0.1:9")
    with pytest.raises(EarthEngineError, match="EDGEFILL_EE_KEY or GOOGLE_APPLICATION_CREDENTIALS"):
        export_landsat(cfg)
    assert not cfg.out.exists() and list(tmp_path.glob(".ee.zarr*")) == []


def test_unreachable_endpoint(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = ee_config(tmp_path, f"http://127.0.0.1:{port}")
    with pytest.raises(EarthEngineError, match=f"cannot initialize Earth Engine at http://127.0.0.1:{port}"):
        export_landsat(cfg, source=EarthEngineSource(cfg, credentials=TOKEN))
    assert not cfg.out.exists()


def test_date_window_with_no_scenes(tmp_path):
    with FakeEarthEngine() as fake:
        cfg = ee_config(tmp_path, fake.url, start="1990-01-01", end="1991-01-01")
        with pytest.raises(ExportError, match="no scenes in LANDSAT/LE07/C02/T1_TOA between 1990-01-01"):
            export_landsat(cfg, source=EarthEngineSource(cfg, credentials=TOKEN))
    assert not cfg.out.exists()


def test_earth_engine_export_end_to_end(tmp_path):
    """AOIs -> listImages (CLOUD_COVER filtered) -> grid -> concurrent computePixels -> store."""
    with FakeEarthEngine(latency_s=0.05) as fake:
        cfg = ee_config(tmp_path, fake.url, count=10, concurrency=8)
        summary = export_landsat(cfg, source=EarthEngineSource(cfg, credentials=TOKEN))
        g = zarr.open_group(str(cfg.out), mode="r")
        valid = g["valid"][:]
        scenes = set(g["scene_id"][:][valid].tolist())
        first = int(np.flatnonzero(valid)[0])
        t = g["transform"][first]
        asset = f"LANDSAT/LE07/C02/T1_TOA/{g['scene_id'][first]}"
        grid = {"dimensions": {"width": 256, "height": 256}, "crsCode": f"EPSG:{g['epsg'][first]}",
                "affineTransform": {"scaleX": t[0], "shearX": t[1], "translateX": t[2], "shearY": t[3],
                                    "scaleY": t[4], "translateY": t[5]}}
        expected = render_window(asset, ["B3", "B2", "B1"], grid)
    assert summary.n_valid >= 10 and summary.complete and g["images"].dtype == np.uint16
    assert g.attrs["radiometry"]["scale"] == pytest.approx(1e-4) and g.attrs["source"] == "earthengine"
    assert "LE07_038034_20010821" not in scenes  # CLOUD_COVER 55 % > 30 %: filtered out
    assert set(g["split"][:][valid].tolist()) == {"train", "test"}  # split by AOI
    np.testing.assert_array_equal(g["images"][first][0], np.rint(expected["B3"].astype(np.float64) * 1e4))
    keys = list(zip(g["scene_id"][:].tolist(), map(tuple, g["transform"][:].tolist())))
    assert len(set(keys)) == len(keys)
    assert fake.max_in_flight <= 8
    assert "test-token" not in json.dumps(dict(g.attrs)) and "key" not in g.attrs["export_config"]


def test_failing_shards_leave_resumable_store(tmp_path):
    with FakeEarthEngine(always="503") as fake:
        cfg = ee_config(tmp_path, fake.url, count=4, max_attempts=2, concurrency=4)
        with pytest.raises(ExportError, match="rerun the same command to resume"):
            export_landsat(cfg, source=EarthEngineSource(cfg, credentials=TOKEN))
        g = zarr.open_group(str(cfg.out), mode="r")
        assert g["export_done"][:].sum() == 0 and "503" in " ".join(g.attrs["export_failures"])
        fake.always = None
        summary = export_landsat(cfg, source=EarthEngineSource(cfg, credentials=TOKEN))
    assert summary.complete and summary.n_valid >= 4


def _timed_fetch(tmp_path, latency_s, n, **kw):
    with FakeEarthEngine(latency_s=latency_s) as fake:
        src = EarthEngineSource(ee_config(tmp_path, fake.url, max_cloud_fraction=1.0, **kw), credentials=TOKEN)
        src.initialize()
        t0 = time.perf_counter()
        patches = src.fetch_many([a_request()] * n)
        elapsed = time.perf_counter() - t0
        src.close()
    assert all(p.pixels is not None for p in patches) and fake.counts["computePixels"] == n
    return elapsed, fake.max_in_flight


def test_concurrent_requests_are_capped(tmp_path):
    elapsed, peak = _timed_fetch(tmp_path, 0.3, 18, concurrency=6)
    assert peak == 6 and elapsed >= 0.9  # 3 full rounds of 6, never more than 6 on the wire


def test_request_rate_is_paced(tmp_path):
    elapsed, _ = _timed_fetch(tmp_path, 0.02, 20, concurrency=10, max_requests_per_s=25.0)
    assert elapsed >= 19 / 25.0  # unpaced this takes ~0.1 s
