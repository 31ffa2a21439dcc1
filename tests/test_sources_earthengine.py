"""EarthEngineSource on the GENUINE earthengine-api client against a fake EE REST server
(127.0.0.1) that answers from real bundled scenes and enforces Earth Engine's quotas (40
concurrent requests, 100 requests/s, 48 MiB a request); only the network boundary is faked.

No verdict depends on load or thread scheduling: requests that must be in flight together are
held by the fake until the test saw them (``FakeEarthEngine(hold=...)``), time bounds are lower
bounds that sleeps guarantee, and the rate tests keep a factor of 2 between a client's pace and
the server's quota (jitter up to a second cannot turn one into the other)."""
from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import google.oauth2.credentials
import numpy as np
import pytest
import shapely.geometry
import zarr

from fake_ee import FAKE_IMAGES, FakeEarthEngine
from fake_ee.server import footprint_lonlat, render_window
from pipeline.export import EXPORT_ARRAYS, export_landsat
from pipeline.export_config import ExportConfig, ExportError
from pipeline.sources.base import PatchRequest
from pipeline.sources.earthengine import EarthEngineError, EarthEngineSource, MalformedResponse, with_retries

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


def a_request(scene_id=ZION, col=300, row=300, block="") -> PatchRequest:
    asset = next(a for a, v in FAKE_IMAGES.items() if v[0] == scene_id)
    from pipeline.scenes import read_scene

    s = read_scene(scene_id)
    x, y = s.transform @ (col, row)
    return PatchRequest(asset=asset, scene_id=asset.rsplit("/", 1)[1], epsg=s.epsg,
                        transform=(30.0, 0.0, float(x), 0.0, -30.0, float(y)), block=block)


def toa_uint16(toa: np.ndarray) -> np.ndarray:
    """Earth Engine's ``multiply(10000).round().toUint16()`` of float32 TOA: a float32 product,
    rounded half away from zero."""
    return np.clip(np.floor(toa.astype(np.float32) * np.float32(10000) + np.float32(0.5)), 0, 65535).astype(np.uint16)


def expected_pixels(asset: str, epsg: int, transform, size: int = 256) -> np.ndarray:
    grid = {"dimensions": {"width": size, "height": size}, "crsCode": f"EPSG:{epsg}",
            "affineTransform": {"scaleX": transform[0], "shearX": transform[1], "translateX": transform[2],
                                "shearY": transform[3], "scaleY": transform[4], "translateY": transform[5]}}
    window = render_window(asset, ["B3", "B2", "B1"], grid)
    return np.stack([toa_uint16(window[b]) for b in ("B3", "B2", "B1")])


@pytest.mark.parametrize("file_format", ["NUMPY_NDARRAY", "GEO_TIFF"])
def test_compute_pixels_genuine_client_returns_scene_window(tmp_path, file_format):
    with FakeEarthEngine() as fake:
        src = EarthEngineSource(ee_config(tmp_path, fake.url, max_cloud_fraction=1.0, file_format=file_format),
                                credentials=TOKEN)
        req = a_request()
        patch = src.fetch(req)
        grid = src._params(req)["grid"]
        want = expected_pixels(req.asset, req.epsg, req.transform)
    assert grid["dimensions"] == {"width": 256, "height": 256}
    assert patch.skip is None and patch.pixels.dtype == np.uint16 and patch.pixels.shape == (3, 256, 256)
    np.testing.assert_array_equal(patch.pixels, want)
    assert patch.pixels.max() > 1000  # real texture, TOA x 1e4
    assert fake.counts["discovery"] >= 1 and fake.counts["computePixels"] == 1  # (algorithms: once a process)
    assert fake.formats == {"NPY" if file_format == "NUMPY_NDARRAY" else "GEO_TIFF": 1}
    assert fake.auth_headers == ["Bearer test-token"]


def test_one_request_per_block_cut_into_the_same_patches(tmp_path):
    """A 2 x 3 block is ONE computePixels request; its patches equal those fetched one by one."""
    cells = [(300 + 256 * c, 200 + 256 * r) for r in range(2) for c in range(3)]
    with FakeEarthEngine() as fake:
        src = EarthEngineSource(ee_config(tmp_path, fake.url, max_cloud_fraction=1.0), credentials=TOKEN)
        block = src.fetch_many([a_request(col=c, row=r, block="0,0") for c, r in cells])
        assert fake.counts["computePixels"] == 1 and fake.max_pixels == 512 * 768
        single = [src.fetch(a_request(col=c, row=r)) for c, r in cells]
    assert fake.counts["computePixels"] == 1 + len(cells)
    for b, one in zip(block, single):
        assert b.request.transform == one.request.transform and b.skip is None
        np.testing.assert_array_equal(b.pixels, one.pixels)
        np.testing.assert_array_equal(b.pixels, expected_pixels(b.request.asset, b.request.epsg, b.request.transform))


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
    """AOIs -> listImages (CLOUD_COVER filtered) -> blocks -> one computePixels per block -> store."""
    with FakeEarthEngine(latency_s=0.05) as fake:
        cfg = ee_config(tmp_path, fake.url, count=10, concurrency=8)
        summary = export_landsat(cfg, source=EarthEngineSource(cfg, credentials=TOKEN))
        g = zarr.open_group(str(cfg.out), mode="r")
        valid = g["valid"][:]
        reasons = g["skip_reason"][:]
        scenes = set(g["scene_id"][:][valid].tolist())
        wants = {int(i): expected_pixels(f"LANDSAT/LE07/C02/T1_TOA/{g['scene_id'][i]}", int(g["epsg"][i]), g["transform"][i])
                 for i in np.flatnonzero(valid)}
    assert cfg.block_shape == (2, 2) and summary.n_valid >= 10 and summary.complete and g["images"].dtype == np.uint16
    assert g.attrs["radiometry"]["scale"] == pytest.approx(1e-4) and g.attrs["source"] == "earthengine"
    assert "LE07_038034_20010821" not in scenes  # CLOUD_COVER 55 % > 30 %: filtered out
    assert set(g["split"][:][valid].tolist()) == {"train", "test"}  # split by AOI
    for i, want in wants.items():
        np.testing.assert_array_equal(g["images"][i], want)
    assert set(reasons[~valid]) <= {"outside", "nodata", "clouds"} and not reasons[valid].any()
    keys = list(zip(g["scene_id"][:].tolist(), map(tuple, g["transform"][:].tolist())))
    assert len(set(keys)) == len(keys)
    # at most one request per block (a block = a shard here; shards in flight past the target are dropped)
    assert fake.counts["computePixels"] <= -(-summary.n_candidates // 4) < summary.n_candidates
    assert fake.max_in_flight <= 8 and fake.rejected == {"concurrency": 0, "rate": 0, "size": 0}
    assert "test-token" not in json.dumps(dict(g.attrs)) and "key" not in g.attrs["export_config"]


def _export_content(cfg: ExportConfig) -> dict[tuple, tuple]:
    """(scene id, transform) -> (valid, skip reason, pixels) of every planned (not outside) row."""
    g = zarr.open_group(str(cfg.out), mode="r")
    images, valid, reasons = g["images"][:], g["valid"][:], g["skip_reason"][:]
    return {(sid, tuple(t)): (bool(v), str(r), images[i].tobytes())
            for i, (sid, t, v, r) in enumerate(zip(g["scene_id"][:], g["transform"][:].tolist(), valid, reasons))
            if r != "outside"}


def test_block_export_equals_one_patch_export_and_geotiff(tmp_path):
    """Blocks of 3 x 2 (NPY), blocks of 2 x 2 (GEO_TIFF) and one patch per request plan the same
    cells and store the same pixels and skips; blocks take far fewer requests."""
    results = {}
    with FakeEarthEngine() as fake:
        for name, kw in {"one": dict(block_patches=(1, 1)), "block": dict(shard_patches=6),
                         "geotiff": dict(file_format="GEO_TIFF")}.items():
            (tmp_path / name).mkdir()
            cfg = ee_config(tmp_path / name, fake.url, concurrency=8, **kw)
            before = fake.counts["computePixels"]
            export_landsat(cfg, source=EarthEngineSource(cfg, credentials=TOKEN))
            results[name] = (_export_content(cfg), fake.counts["computePixels"] - before, cfg.block_shape)
    one, block, geotiff = results["one"], results["block"], results["geotiff"]
    assert (one[2], block[2], geotiff[2]) == ((1, 1), (3, 2), (2, 2))
    assert len(one[0]) > 20 and one[0] == block[0] == geotiff[0]
    assert one[1] == len(one[0]) and block[1] <= len(one[0]) / 3 and geotiff[1] <= len(one[0]) / 2.5
    assert fake.formats["GEO_TIFF"] == geotiff[1]


@pytest.mark.parametrize("fault, message", [("garbage", "not NPY"), ("wrong_shape", "shape")])
def test_malformed_response_fails_at_once(tmp_path, fault, message):
    with FakeEarthEngine(faults=[fault]) as fake:
        src = EarthEngineSource(ee_config(tmp_path, fake.url), credentials=TOKEN)
        with pytest.raises(MalformedResponse, match=message):
            src.fetch(a_request())
    assert fake.counts["computePixels"] == 1  # never retried


def test_only_transport_and_http_failures_are_retried():
    calls = []

    def bug():
        calls.append(1)
        raise TypeError("unsupported operand")  # a programming error: surfaces at once, as itself

    with pytest.raises(TypeError, match="unsupported operand"):
        with_retries(bug, "x", max_attempts=5, backoff_s=0.0)
    assert len(calls) == 1

    def flaky():
        calls.append(1)
        if len(calls) < 4:
            raise ConnectionError("connection reset by peer")
        return "ok"

    assert with_retries(flaky, "x", max_attempts=5, backoff_s=0.0) == "ok" and len(calls) == 4


def _wait_for(condition, what: str, limit_s: float = 120.0) -> None:
    """Poll ``condition`` (a hang guard, not a timing claim: the limit only ends a broken run)."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, f"never saw {what} within {limit_s:g} s"
        time.sleep(0.01)


def _held_fetch(src, requests, release: threading.Event, until, what: str) -> list:
    """``src.fetch_many(requests)`` in a thread against a fake holding every accepted request;
    releases them once ``until()`` holds (or the fetch ended); returns the patches."""
    with ThreadPoolExecutor(1) as pool:
        job = pool.submit(src.fetch_many, requests)
        try:
            _wait_for(lambda: until() or job.done(), what)
        finally:
            release.set()
        return job.result()


def test_server_rejects_over_concurrency_with_429_and_client_retries(tmp_path):
    """Above its concurrency quota the fake answers 429 at once (as Earth Engine does, never queueing);
    the client backs off and every patch still arrives. The 3 accepted requests are held until a 4th
    was refused, so the refusal does not depend on how fast the client's threads start."""
    release = threading.Event()
    with FakeEarthEngine(max_concurrent=3, hold=release) as fake:
        src = EarthEngineSource(ee_config(tmp_path, fake.url, max_cloud_fraction=1.0, concurrency=8,
                                          backoff_s=0.2, max_attempts=8), credentials=TOKEN)
        patches = _held_fetch(src, [a_request()] * 12, release,
                              lambda: fake.in_flight == 3 and fake.rejected["concurrency"] > 0, "a refused 4th request")
        src.close()
    assert all(p.pixels is not None for p in patches)
    assert fake.rejected["concurrency"] > 0 and fake.max_in_flight == 3
    assert fake.counts["computePixels"] == 12 + fake.rejected["concurrency"]


def test_server_enforces_request_rate_and_paced_client_stays_under_it(tmp_path):
    """A client allowed 100 requests/s with 20 on the wire sends its 20 within ~0.2 s: the fake's
    10-per-second window refuses some. A client paced at 5/s (half the quota: 11 starts span 2 s,
    so only a stall of over a second could squeeze them into one window) is never refused."""
    with FakeEarthEngine(max_requests_per_s=10) as fake:
        cfg = ee_config(tmp_path, fake.url, max_cloud_fraction=1.0, concurrency=10, backoff_s=0.3, max_attempts=8)
        fast = EarthEngineSource(cfg.model_copy(update={"max_requests_per_s": 100.0, "concurrency": 20}),
                                 credentials=TOKEN)
        assert all(p.pixels is not None for p in fast.fetch_many([a_request()] * 20))
        fast.close()
        rejected = fake.rejected["rate"]
        time.sleep(1.1)  # let the window drain
        paced = EarthEngineSource(cfg.model_copy(update={"max_requests_per_s": 5.0}), credentials=TOKEN)
        assert all(p.pixels is not None for p in paced.fetch_many([a_request()] * 12))
        paced.close()
    assert rejected > 0 and fake.rejected["rate"] == rejected  # the paced client was never refused


def test_request_over_the_size_limit(tmp_path):
    """Earth Engine's 400 for a request over its size limit: a block is split until it fits; one
    patch over the limit fails at once with Earth Engine's message."""
    one_patch = 256 * 256 * 4 * 3  # 4 uint16 bands + their mask bytes
    cells = [(300 + 256 * c, 200 + 256 * r) for r in range(2) for c in range(2)]
    with FakeEarthEngine(max_request_bytes=2 * one_patch) as fake:
        src = EarthEngineSource(ee_config(tmp_path, fake.url, max_cloud_fraction=1.0), credentials=TOKEN)
        patches = src.fetch_many([a_request(col=c, row=r, block="0,0") for c, r in cells])
        assert fake.rejected["size"] == 1 and fake.counts["computePixels"] == 3  # 4 cells -> 2 x 2 cells
        for p in patches:
            np.testing.assert_array_equal(p.pixels, expected_pixels(p.request.asset, p.request.epsg, p.request.transform))
        fake.max_request_bytes = one_patch - 1
        with pytest.raises(EarthEngineError, match=rf"Total request size \({one_patch} bytes\) must be less than "
                                                   rf"or equal to {one_patch - 1} bytes"):
            src.fetch(a_request())
    assert fake.rejected["size"] == 2 and fake.counts["computePixels"] == 4  # not retried


def test_block_size_follows_the_request_limit():
    assert ExportConfig(shard_patches=64).block_shape == (8, 8)  # 2048 x 2048 x 4 bands x 3 B = 48 MiB
    assert ExportConfig(shard_patches=42).block_shape == (7, 6)
    assert ExportConfig(shard_patches=128).block_shape == (8, 8)  # two blocks a shard
    assert ExportConfig(shard_patches=16, block_patches=(1, 1)).block_shape == (1, 1)
    with pytest.raises(ValueError, match="over Earth Engine's 50331648-byte limit"):
        ExportConfig(block_patches=(9, 8))


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


def test_failed_blocks_resume_to_the_uninterrupted_store(tmp_path):
    """Three block requests fail for good (one shard each); the rerun refetches exactly the missing
    blocks and the store equals an uninterrupted export, array for array."""
    (tmp_path / "ref").mkdir()
    (tmp_path / "run").mkdir()
    with FakeEarthEngine() as fake:
        ref = ee_config(tmp_path / "ref", fake.url, count=12, concurrency=4)
        export_landsat(ref, source=EarthEngineSource(ref, credentials=TOKEN))
        cfg = ee_config(tmp_path / "run", fake.url, count=12, concurrency=4, max_attempts=1)
        fake.faults.extend(["503"] * 3)
        with pytest.raises(ExportError, match="3 shard failure"):
            export_landsat(cfg, source=EarthEngineSource(cfg, credentials=TOKEN))
        done_before = int(zarr.open_group(str(cfg.out), mode="r")["export_done"][:].sum())
        before = fake.counts["computePixels"]
        summary = export_landsat(cfg, source=EarthEngineSource(cfg, credentials=TOKEN))
        refetched = fake.counts["computePixels"] - before
    want, got = zarr.open_group(str(ref.out), mode="r"), zarr.open_group(str(cfg.out), mode="r")
    assert summary.complete and summary.shards_written_now == 3 and refetched == 3 and done_before > 0
    for name in EXPORT_ARRAYS + ("export_done", "export_plan"):
        np.testing.assert_array_equal(got[name][:], want[name][:], err_msg=name)
    assert got.attrs["export_summary"]["content"] == want.attrs["export_summary"]["content"]


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
    """18 requests, at most 6 on the wire: the fake holds the accepted ones until 6 are in flight
    (so 6 at once is seen whatever the load), then each takes 0.3 s: 3 rounds at least."""
    release = threading.Event()
    with FakeEarthEngine(latency_s=0.3, hold=release) as fake:
        src = EarthEngineSource(ee_config(tmp_path, fake.url, max_cloud_fraction=1.0, concurrency=6), credentials=TOKEN)
        src.initialize()
        t0 = time.perf_counter()
        patches = _held_fetch(src, [a_request()] * 18, release, lambda: fake.in_flight == 6, "6 requests in flight")
        elapsed = time.perf_counter() - t0
        src.close()
    assert all(p.pixels is not None for p in patches) and fake.counts["computePixels"] == 18
    assert fake.max_in_flight == 6 and elapsed >= 0.9  # never more than 6 on the wire (a lower bound: sleeps)


def test_request_rate_is_paced(tmp_path):
    elapsed, _ = _timed_fetch(tmp_path, 0.02, 20, concurrency=10, max_requests_per_s=25.0)
    assert elapsed >= 19 / 25.0  # unpaced this takes ~0.1 s


# --------------------------------------------------------------------------- Level-2 SR, endpoints

def _sr_export(tmp_path, fake, count=4):
    cfg = ee_config(tmp_path, fake.url, product="sr", count=count, concurrency=4)
    summary = export_landsat(cfg, source=EarthEngineSource(cfg, credentials=TOKEN))
    return cfg, summary


def test_sr_export_records_its_radiometry_and_level2_pixels(tmp_path):
    """``--product sr``: the Level-2 collection's SR_B3/SR_B2/SR_B1 DN land in the store unchanged,
    and the store's typed metadata says how to read them (Collection 2 L2 scale and offset)."""
    from fake_ee.server import SR_BIAS, SR_COLLECTION, SR_GAIN, SR_OFFSET, SR_SCALE
    from pipeline.store import open_store, read_meta

    with FakeEarthEngine() as fake:
        cfg, summary = _sr_export(tmp_path, fake)
    assert summary.n_valid >= 4 and summary.complete
    meta = read_meta(open_store(cfg.out))
    assert (meta.radiometry.dtype, meta.radiometry.scale, meta.radiometry.offset) == ("uint16", SR_SCALE, SR_OFFSET)
    assert "surface reflectance" in meta.radiometry.description
    assert meta.export_config["collection"] == SR_COLLECTION and meta.export_config["bands"] == ["SR_B3", "SR_B2", "SR_B1"]
    g = zarr.open_group(str(cfg.out), mode="r")
    valid = np.flatnonzero(g["valid"][:])
    for i in valid:
        epsg, t = int(g["epsg"][i]), g["transform"][i]
        grid = {"dimensions": {"width": 256, "height": 256}, "crsCode": f"EPSG:{epsg}",
                "affineTransform": dict(zip(("scaleX", "shearX", "translateX", "shearY", "scaleY", "translateY"), t))}
        sr = render_window(f"{SR_COLLECTION}/{g['scene_id'][i]}", ["SR_B3", "SR_B2", "SR_B1"], grid)
        np.testing.assert_array_equal(g["images"][i], np.stack([sr[b] for b in ("SR_B3", "SR_B2", "SR_B1")]))
        # read with the recorded scale/offset, the stored DN are the surface reflectance of the same pixels' TOA
        toa = render_window(f"LANDSAT/LE07/C02/T1_TOA/{g['scene_id'][i]}", ["B3", "B2", "B1"], grid)
        want = SR_GAIN * np.stack([toa[b] for b in ("B3", "B2", "B1")]).astype(np.float64) + SR_BIAS
        got = meta.radiometry.to_unit(g["images"][i])
        inside = want > 0.001  # to_unit clips at 0
        np.testing.assert_allclose(got[inside], want[inside], atol=SR_SCALE)


def test_a_dn_trained_model_fills_an_sr_scene_in_its_own_units(tmp_path):
    """A Level-2 SR patch (uint16 DN with its scale/offset tags) through the shipped model, trained on
    8-bit DN: the filled values are SR DN of the scene's range (per-scene stretch there and back),
    close to the truth, and every other pixel, the dtype and the tags are the input's."""
    import rasterio
    from affine import Affine

    from fake_ee.server import SR_OFFSET, SR_SCALE
    from models.inpaint_scene import InpaintSceneConfig, inpaint_scene
    from models.registry import SHIPPED_DIR, shipped_index

    with FakeEarthEngine() as fake:
        cfg, _ = _sr_export(tmp_path, fake)
    g = zarr.open_group(str(cfg.out), mode="r")
    i = int(np.flatnonzero(g["valid"][:])[0])
    truth = np.asarray(g["images"][i])
    assert truth.min() > 0 and 5000 < np.median(truth) < 30000  # Level-2 DN, not 8-bit values
    hole = np.zeros((256, 256), bool)
    hole[:, 120:130] = True  # a scan-gap-like stripe
    src = tmp_path / "sr_scene.tif"
    with rasterio.open(src, "w", driver="GTiff", width=256, height=256, count=3, dtype="uint16", nodata=0,
                       crs=f"EPSG:{int(g['epsg'][i])}", transform=Affine(*g["transform"][i])) as dst:
        dst.write(np.where(hole, 0, truth).astype(np.uint16))
        dst.scales, dst.offsets = (SR_SCALE,) * 3, (SR_OFFSET,) * 3
    model = SHIPPED_DIR / shipped_index()["default"]
    summary = inpaint_scene(InpaintSceneConfig(input=src, output=tmp_path / "out" / "sr_filled.tif", model=str(model)))
    with rasterio.open(summary.output) as o:
        out = o.read()
        assert o.dtypes == ("uint16",) * 3 and o.scales == (SR_SCALE,) * 3 and o.offsets == (SR_OFFSET,) * 3
    assert summary.filled_pixels == int(hole.sum()) and "per-scene stretch of uint16" in summary.radiometry["description"]
    np.testing.assert_array_equal(out[:, ~hole], truth[:, ~hole])
    known = truth[:, ~hole]
    assert known.min() <= out[:, hole].min() and out[:, hole].max() <= known.max()  # the scene's SR DN range
    err = np.abs(out[:, hole].astype(np.float64) - truth[:, hole]).mean()
    constant = np.abs(known.mean(axis=1, keepdims=True) - truth[:, hole]).mean()
    assert err < 0.9 * constant, (err, constant)  # a fill of the scene, not of some other scale


class _Route:
    """The network for Earth Engine's public hosts in a test: requests the genuine client sends to
    ``https://earthengine[-highvolume].googleapis.com`` are answered by the fake server (a transport
    adapter on the client's own session, standing in for DNS and TLS) and the URLs are recorded."""

    HOSTS = ("https://earthengine-highvolume.googleapis.com", "https://earthengine.googleapis.com")

    def __init__(self, fake_url: str):
        import requests

        routed = self.urls = []

        class Adapter(requests.adapters.HTTPAdapter):
            def send(self, request, **kw):
                routed.append(request.url)
                host = next(h for h in _Route.HOSTS if request.url.startswith(h))
                request.url = fake_url + request.url[len(host):]
                return super().send(request, **kw)

        self.session = requests.Session()
        for host in self.HOSTS:  # longer prefixes than the source's own "https://" adapter: these win
            self.session.mount(host + "/", Adapter())


@pytest.fixture
def routed_ee():
    import ee

    state = ee.data._get_state()  # noqa: SLF001
    saved = state.requests_session
    with FakeEarthEngine() as fake:
        route = _Route(fake.url)
        state.requests_session = route.session  # the genuine client sends everything through it
        try:
            yield fake, route
        finally:
            state.requests_session = saved


def test_high_volume_selects_the_high_volume_endpoint_and_the_default_the_standard_one(tmp_path, routed_ee):
    """No ``api_url``: ``--high-volume`` initialises the genuine client at Earth Engine's high-volume
    endpoint and every request goes there; without it, at the standard endpoint, even after a
    high-volume session in the same process."""
    import ee

    from pipeline.export_config import HIGH_VOLUME_URL, STANDARD_URL

    fake, route = routed_ee
    for high_volume, host in ((True, HIGH_VOLUME_URL), (False, STANDARD_URL)):
        route.urls.clear()
        before = fake.counts["computePixels"]
        src = EarthEngineSource(ee_config(tmp_path, None, high_volume=high_volume, max_cloud_fraction=1.0),
                                credentials=TOKEN)
        patch = src.fetch(a_request())
        assert patch.skip is None and patch.pixels.dtype == np.uint16
        assert ee.data._get_state().cloud_api_base_url == host  # noqa: SLF001
        assert route.urls and all(u.startswith(host + "/") for u in route.urls), route.urls
        assert any(":computePixels" in u for u in route.urls) and fake.counts["computePixels"] == before + 1


# -- reference acquisitions: other dates of the footprint, any Landsat sensor ----------------------

@pytest.mark.filterwarnings("ignore:date window ends")
def test_references_skip_the_cloudy_date_and_map_oli_bands(tmp_path):
    """ZION 2015-08-10 (L7) with R = 2: the nearest date (L7 08-12) is cloudy by its QA and skipped;
    the L8 08-18 image is taken with OLI's B4/B3/B2 as red/green/blue, then L7 09-27; dates, sensors,
    ids recorded; every reference fetched per block, over the block's own window."""
    from pipeline.store import read_meta

    with FakeEarthEngine() as fake:
        aoi = write_aois(tmp_path / "zion.geojson", scenes=((ZION, "train"),))
        cfg = ee_config(tmp_path, fake.url, aois=[aoi], start="2015-08-09", end="2015-08-11", references=2,
                        count=4, concurrency=4)
        summary = export_landsat(cfg, source=EarthEngineSource(cfg, credentials=TOKEN), max_shards_in_flight=1)
        g = zarr.open_group(str(cfg.out), mode="r")
        valid = g["valid"][:]
        wants = {}
        for i in np.flatnonzero(valid):
            t = g["transform"][i]
            grid = {"dimensions": {"width": 256, "height": 256}, "crsCode": f"EPSG:{int(g['epsg'][i])}",
                    "affineTransform": {"scaleX": t[0], "shearX": t[1], "translateX": t[2], "shearY": t[3],
                                        "scaleY": t[4], "translateY": t[5]}}
            l8 = render_window("LANDSAT/LC08/C02/T1_TOA/LC08_038034_20150818", ["B4", "B3", "B2", "QA_PIXEL"], grid)
            l7 = render_window("LANDSAT/LE07/C02/T1_TOA/LE07_038034_20150927", ["B3", "B2", "B1", "QA_PIXEL"], grid)
            wants[int(i)] = [(np.stack([toa_uint16(w[b]) for b in bands]), (w["QA_PIXEL"] & 0b11011) == 0)
                             for w, bands in ((l8, ("B4", "B3", "B2")), (l7, ("B3", "B2", "B1")))]
        requests = fake.counts["computePixels"]
    assert summary.complete and summary.n_valid >= 4 and read_meta(g).references == 2
    assert set(g["scene_id"][:][valid].tolist()) == {"LE07_038034_20150810"}
    ref, ref_valid = g["reference"][:], g["reference_valid"][:]
    assert g["reference"].dtype == np.uint16
    for i, want in wants.items():
        assert g["reference_acquired"][i].tolist() == ["2015-08-18", "2015-09-27"]
        assert g["reference_sensor"][i].tolist() == ["LC08", "LE07"]
        assert g["reference_scene_id"][i].tolist() == ["LC08_038034_20150818", "LE07_038034_20150927"]
        for slot, (pixels, clear) in enumerate(want):
            np.testing.assert_array_equal(ref[i, slot], pixels)
            np.testing.assert_array_equal(ref_valid[i, slot], clear)
            assert clear.mean() >= 0.8
        assert not np.array_equal(ref[i, 0], ref[i, 1])
    assert not ref_valid[~valid].any() and (g["reference_sensor"][:][~valid] == "").all()
    assert "LE07_038034_20150812" not in set(g["reference_scene_id"][:].ravel().tolist())
    # one shard = one block here: the target + the three candidates (cloudy one included: QA decides) at most
    assert summary.shards_total + 3 <= requests <= 4 * summary.shards_total


def test_reference_band_mapping():
    from pipeline.sources.earthengine import rgb_band_ids

    assert rgb_band_ids("LC09", "toa") == ["B4", "B3", "B2"] and rgb_band_ids("LT05", "sr") == ["SR_B3", "SR_B2", "SR_B1"]
    with pytest.raises(ExportError, match="no band mapping for Landsat sensor 'LM01'"):
        rgb_band_ids("LM01", "toa")
