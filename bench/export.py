"""Benchmark: Earth Engine export throughput against the fake EE server (1 s latency per
computePixels, at most 40 requests served concurrently), genuine earthengine-api client.

    .venv/bin/python bench/export.py [--patches-target 1200] [--sequential 5]

Prints patches/s of the real export (``export_landsat``, concurrency 40, whole pipeline: plan,
fetch, shard writes) and of a sequential ``fetch`` loop measured in the same run, and the ratio.
Target: >= 36 x sequential (90 % of the 40 patches/s ceiling).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import google.oauth2.credentials  # noqa: E402
import shapely.geometry  # noqa: E402

from fake_ee import FAKE_IMAGES, FakeEarthEngine  # noqa: E402
from fake_ee.server import footprint_lonlat  # noqa: E402
from pipeline.export import export_landsat, plan_candidates  # noqa: E402
from pipeline.export_config import ExportConfig  # noqa: E402
from pipeline.sources.earthengine import EarthEngineSource  # noqa: E402

SCENES = ("LC08_038034_20150818_ZION", "LC08_224078_20200518_ITAIPU", "LT05_040028_20060706")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patches-target", type=int, default=1200, help="approximate candidates for the concurrent run")
    ap.add_argument("--sequential", type=int, default=5, help="patches fetched one by one")
    ap.add_argument("--latency", type=float, default=1.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="edgefill-bench-"))
    aoi = tmp / "aois.geojson"
    aoi.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": s.lower(), "split": "train" if i else "test"},
         "geometry": shapely.geometry.mapping(footprint_lonlat(s))} for i, s in enumerate(SCENES)]}))
    token = google.oauth2.credentials.Credentials(token="bench")
    base = dict(source="earthengine", project="bench", aois=[aoi], max_scene_cloud_cover=100.0,
                max_cloud_fraction=1.0, max_nodata=1.0, shard_patches=16, concurrency=40, start="1999-06-01")
    # probe: candidates per fake image, with the in-process server (no latency)
    with FakeEarthEngine() as fake:
        probe = ExportConfig(**base, api_url=fake.url, out=tmp / "probe.zarr")
        per_image = max(1, len(plan_candidates(EarthEngineSource(probe, credentials=token))) // len(FAKE_IMAGES))
    extra = max(0, args.patches_target // per_image - len(FAKE_IMAGES))
    # the measured server runs in its own process (its numpy work must not share the client's GIL)
    server = subprocess.Popen([sys.executable, str(REPO / "tests" / "fake_ee" / "server.py"), "--latency", str(args.latency),
                               "--max-concurrent", "40", "--extra-dates", str(extra)],
                              cwd=REPO / "tests", env={**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"},
                              stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()
        cfg = ExportConfig(**base, api_url=url, out=tmp / "bench.zarr")
        src = EarthEngineSource(cfg, credentials=token)
        marks: dict[str, float] = {}
        fetch_many = src.fetch_many

        def timed_fetch_many(requests):  # marks the start of the fetch phase
            marks.setdefault("first_fetch", time.perf_counter())
            return fetch_many(requests)

        src.fetch_many = timed_fetch_many
        t0 = time.perf_counter()
        summary = export_landsat(cfg, source=src, progress=lambda *a: marks.__setitem__("last_shard", time.perf_counter()))
        concurrent_s = time.perf_counter() - t0
        fetch_s = marks["last_shard"] - marks["first_fetch"]
        n = summary.n_patches

        cands = plan_candidates(src)[: args.sequential]
        t0 = time.perf_counter()
        for req in cands:
            src.fetch(req)
        sequential_s = time.perf_counter() - t0
        src.close()
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    conc_rate, seq_rate = n / concurrent_s, len(cands) / sequential_s
    print(f"fake EE (own process): latency {args.latency:.1f} s/request, at most 40 requests served concurrently")
    print(f"concurrent export : {n} patches in {concurrent_s:.2f} s = {conc_rate:.2f} patches/s "
          f"({summary.n_valid} valid, {summary.shards_total} shards)")
    print(f"  of which fetch+write phase: {fetch_s:.2f} s = {n / fetch_s:.2f} patches/s "
          f"(the rest: Earth Engine init, AOI scene listing, planning, store creation, STAC + quicklook)")
    print(f"sequential loop   : {len(cands)} patches in {sequential_s:.2f} s = {seq_rate:.2f} patches/s")
    print(f"speed-up          : {conc_rate / seq_rate:.1f}x sequential end to end, {n / fetch_s / seq_rate:.1f}x in "
          f"the fetch phase (target >= 36x); {100 * conc_rate / (40 / args.latency):.0f}% of the 40 patches/s ceiling")


if __name__ == "__main__":
    main()
