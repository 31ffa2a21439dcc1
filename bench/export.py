"""Benchmark: Earth Engine export throughput, one patch per request versus blocks, against the fake
Earth Engine server in its own process (1 s per computePixels, Earth Engine's quotas: 40 concurrent
requests - more are answered 429 -, 100 requests/s, 48 MiB a request), genuine earthengine-api client.

    .venv/bin/python bench/export.py [--one-patch 400] [--blocks 6000] [--latency 1.0]

Both exports run in this one run, through the whole pipeline (Earth Engine init, AOI scene listing,
planning, fetch, whole-shard writes, STAC + quicklook). The fake images are Landsat-sized: each is
a bundled scene repeated (pixels repeat; the plumbing is what is measured). Prints patches/s of
each, the one-patch ceiling (40 requests in flight / latency), where the block export's time goes
(fetch+decode vs store writes, from the process CPU clock), and as its last line
``speedup_vs_one_patch_ceiling=X`` (target >= 10, i.e. >= 400 patches/s at 1 s latency).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
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

from fake_ee.server import footprint_lonlat  # noqa: E402
from pipeline.export import export_landsat  # noqa: E402
from pipeline.export_config import ExportConfig  # noqa: E402
from pipeline.sources.earthengine import EarthEngineSource  # noqa: E402

#: bundled scene -> copies along each axis: fake images of ~6000 x 6000 px, like a Landsat scene.
BENCH_SCENES = {"LC08_038034_20150818_ZION": 5, "LC08_224078_20200518_ITAIPU": 6, "LT05_040028_20060706": 8}
SPLITS = {"LC08_038034_20150818_ZION": "train", "LC08_224078_20200518_ITAIPU": "test", "LT05_040028_20060706": "validation"}


def start_fake_server(latency_s: float, dates: int, cache_mb: int = 1536) -> tuple[subprocess.Popen, str]:
    """The fake server in its own process (its numpy work must not share the client's GIL), ``dates``
    images per bundled scene, answers to identical requests (other dates, same scene and window)
    kept up to ``cache_mb``; returns the process and its URL."""
    scenes = ",".join(f"{s}:{t}" for s, t in BENCH_SCENES.items())
    server = subprocess.Popen([sys.executable, str(REPO / "tests" / "fake_ee" / "server.py"), "--latency", str(latency_s),
                               "--max-concurrent", "40", "--max-rate", "100", "--extra-dates", str(dates * len(BENCH_SCENES)),
                               "--scenes", scenes, "--cache-mb", str(cache_mb)],
                              cwd=REPO / "tests", env={**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"},
                              stdout=subprocess.PIPE, text=True)
    return server, server.stdout.readline().strip()


def write_aois(path: Path) -> Path:
    """One AOI per bundled scene: the footprint of its (repeated) fake images."""
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": s.lower(), "split": SPLITS[s]},
         "geometry": shapely.geometry.mapping(footprint_lonlat(s, t))} for s, t in BENCH_SCENES.items()]}))
    return path


def bench_config(url: str, out: Path, aoi: Path, **kw) -> ExportConfig:
    return ExportConfig(source="earthengine", project="bench", api_url=url, aois=[aoi], out=out,
                        max_scene_cloud_cover=100.0, concurrency=40, start="1999-06-01", **kw)


def timed_export(cfg: ExportConfig, token) -> dict:
    """Run one export; wall seconds of the whole run and of its fetch+write phase, CPU seconds."""
    src = EarthEngineSource(cfg, credentials=token)
    marks: dict[str, float] = {}
    fetch_many = src.fetch_many

    def timed_fetch_many(requests):  # marks the start of the fetch phase
        marks.setdefault("first_fetch", time.perf_counter())
        return fetch_many(requests)

    src.fetch_many = timed_fetch_many
    cpu0, t0 = time.process_time(), time.perf_counter()
    summary = export_landsat(cfg, source=src, progress=lambda *a: marks.__setitem__("last_shard", time.perf_counter()))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    src.close()
    return {"summary": summary, "seconds": seconds, "fetch_s": marks["last_shard"] - marks["first_fetch"], "cpu_s": cpu}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--one-patch", type=int, default=400, help="valid patches of the one-patch-per-request export")
    ap.add_argument("--blocks", type=int, default=6000, help="valid patches of the block export")
    ap.add_argument("--latency", type=float, default=1.0)
    ap.add_argument("--dates", type=int, default=4, help="fake images (dates) per bundled scene")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="edgefill-bench-"))
    token = google.oauth2.credentials.Credentials(token="bench")
    server, url = start_fake_server(args.latency, args.dates)
    import psutil

    server_proc = psutil.Process(server.pid)
    try:
        aoi = write_aois(tmp / "aois.geojson")
        one = timed_export(bench_config(url, tmp / "one.zarr", aoi, count=args.one_patch, shard_patches=16,
                                        block_patches=(1, 1)), token)
        server_cpu0 = sum(server_proc.cpu_times()[:2])
        block = timed_export(bench_config(url, tmp / "block.zarr", aoi, count=args.blocks, shard_patches=64), token)
        server_cpu = sum(server_proc.cpu_times()[:2]) - server_cpu0
        store_mb = sum(f.stat().st_size for f in (tmp / "block.zarr").rglob("*") if f.is_file()) / 2**20
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    ceiling = 40 / args.latency
    one_rate = fetched(one["summary"]) / one["fetch_s"]
    s = block["summary"]
    rate, rate_all = fetched(s) / block["fetch_s"], fetched(s) / block["seconds"]
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"fake Earth Engine (own process): {args.latency:.1f} s per request, 40 concurrent (429 above), 100 requests/s, "
          f"48 MiB per request; {args.dates} Landsat-sized images per scene; {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"one patch per request : {fetched(one['summary'])} patches fetched, fetch+write {one['fetch_s']:.1f} s = "
          f"{one_rate:.1f} patches/s ({100 * one_rate / ceiling:.0f}% of the {ceiling:.0f} patches/s ceiling)")
    print(f"blocks of 8 x 8 (48 MiB): {fetched(s)} patches fetched ({s.n_valid} valid; {s.n_patches} rows with the blocks' "
          f"outside cells, {s.shards_total} shards), fetch+write {block['fetch_s']:.1f} s = {rate:.1f} patches/s; whole run "
          f"(init, listing, planning, STAC) {block['seconds']:.1f} s = {rate_all:.1f} patches/s")
    print(f"  client CPU {block['cpu_s']:.1f} s for {block['seconds']:.1f} s wall ({block['cpu_s'] / block['seconds']:.2f} "
          f"of {os.cpu_count()} cores); {1000 * block['cpu_s'] / fetched(s):.2f} CPU ms per fetched patch; fake server "
          f"CPU {server_cpu:.1f} s; store {store_mb:.0f} MiB; peak RSS {rss_mb:.0f} MiB")
    print(f"speed-up vs one patch per request measured here: {rate / one_rate:.1f}x")
    print(f"speedup_vs_one_patch_ceiling={rate / ceiling:.1f}")


def fetched(summary) -> int:
    """Patches fetched from Earth Engine: every row but the blocks' cells outside AOI or footprint."""
    return summary.n_patches - summary.skipped.get("outside", 0)


if __name__ == "__main__":
    main()
