"""The mission's scale, measured end to end (not in CI: many minutes): export N patches (default
60,000) from the fake Earth Engine server (its own process, 1 s per request, 40 concurrent requests -
429 above -, 100 requests/s, 48 MiB a request; Landsat-sized images whose pixels repeat: the plumbing
is what is measured), prepare them (Dask edges, mask library, pairings), check that every planned
patch is present exactly once, then read the prepared store with the training data loader
(``pipeline.dataset.TrainingSamples`` + ``models.data.epoch_batches`` / ``batch_iterator``).

    nice -n 10 .venv/bin/python bench/scale.py [--count 60000] [--loader-batches 40] [--keep DIR]

Prints wall time and CPU per stage, peak RSS (this process; the fake server's separately), the
store's size on disk, the presence check, and the loader's images/s against the 500 images/s one
GPU consumes in joint training of the full preset (256 x 256). Target: export + prepare < 10 min
on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "bench")]

import google.oauth2.credentials  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402

from export import BENCH_SCENES, bench_config, start_fake_server, write_aois  # noqa: E402
from pipeline.export import export_landsat  # noqa: E402
from pipeline.prepare import (DaskConfig, PrepareConfig, compute_edges, dask_client, ensure_mask_library,  # noqa: E402
                              record_prepare, write_pairings)
from pipeline.sources.base import PatchRequest  # noqa: E402
from pipeline.sources.earthengine import EarthEngineSource  # noqa: E402
from pipeline.store import open_store  # noqa: E402

GPU_IMAGES_PER_S = 500  # joint training of the full preset at 256 x 256 on one H100 (the GPU issue's target)


class Stage:
    """Wall and CPU seconds (this process) of a ``with`` block."""

    def __init__(self, name: str, log: dict):
        self.name, self.log = name, log

    def __enter__(self) -> "Stage":
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.log[self.name] = {"wall_s": time.perf_counter() - self.t0, "cpu_s": time.process_time() - self.c0}


def du_mib(path: Path) -> float:
    """Bytes on disk (allocated blocks) under ``path``, MiB."""
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file()) / 2**20


def presence_check(store: Path) -> dict:
    """Every planned candidate row holds exactly its planned patch, once; the valid ones are distinct."""
    g = open_store(store, require=("images", "export_plan", "export_done", "valid", "skip_reason"))
    n = g["images"].shape[0]
    plan = g["export_plan"][:n]
    scene_ids, transforms = g["scene_id"][:], g["transform"][:]
    valid, reasons, done = g["valid"][:], g["skip_reason"][:], g["export_done"][:]
    mismatched = 0
    for i, row in enumerate(plan):
        req = PatchRequest.model_validate_json(row)
        mismatched += req.scene_id != scene_ids[i] or tuple(req.transform) != tuple(transforms[i].tolist())
    keys = list(zip(scene_ids.tolist(), map(tuple, transforms.tolist())))
    return {"rows": int(n), "valid": int(valid.sum()), "shards_done": int(done.sum()), "shards": int(len(done)),
            "rows_unlike_plan": int(mismatched), "duplicate_rows": len(keys) - len(set(keys)),
            "skipped": {str(r): int((reasons == r).sum()) for r in sorted(set(reasons[~valid].tolist()))},
            "ok": bool(mismatched == 0 and len(set(keys)) == len(keys) and done.all() and (valid == (reasons == "")).all())}


def loader_rate(store: Path, batches: int, batch_size: int, workers: int) -> dict:
    """images/s of the training loader (fresh mask, augmentation, known edges per sample) over whole
    256 x 256 patches, after one warm-up batch."""
    from models.data import batch_iterator, epoch_batches
    from pipeline.dataset import TrainingSamples

    ds = TrainingSamples(store, crop_size=None, seed=0)
    keys = epoch_batches(len(ds), batch_size, epoch=0, seed=0)[: batches + 1]
    it = batch_iterator(ds, keys, 0, num_workers=workers)
    next(it)
    t0, n = time.perf_counter(), 0
    for batch in it:
        n += len(batch["index"])
    seconds = time.perf_counter() - t0
    return {"workers": workers, "images": n, "seconds": seconds, "images_per_s": n / seconds}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=60000, help="valid patches to export")
    ap.add_argument("--latency", type=float, default=1.0)
    ap.add_argument("--dates", type=int, default=0, help="fake images per bundled scene (0: enough for --count)")
    ap.add_argument("--loader-batches", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2, help="Dask threads for the edges")
    ap.add_argument("--keep", type=Path, default=None, help="keep the store in this folder")
    args = ap.parse_args()
    dates = args.dates or max(2, -(-args.count // (350 * len(BENCH_SCENES))) + 2)  # ~350 valid patches an image
    tmp = Path(tempfile.mkdtemp(prefix="edgefill-scale-", dir=args.keep))
    store = tmp / "scale.zarr"
    token = google.oauth2.credentials.Credentials(token="bench")
    stages: dict[str, dict] = {}
    server, url = start_fake_server(args.latency, dates)
    server_proc = psutil.Process(server.pid)
    try:
        cfg = bench_config(url, store, write_aois(tmp / "aois.geojson"), count=args.count, shard_patches=64)
        with Stage("export", stages):
            summary = export_landsat(cfg, source=EarthEngineSource(cfg, credentials=token))
        server_cpu = sum(server_proc.cpu_times()[:2])
        server_rss = server_proc.memory_info().rss / 2**20
    finally:
        server.terminate()
        server.wait(10)
    try:
        with Stage("presence check", stages):
            presence = presence_check(store)
        prep_cfg, dask = PrepareConfig(), DaskConfig(n_workers=1, threads_per_worker=args.threads)
        with Stage("prepare", stages):
            t0 = time.perf_counter()
            with dask_client(dask) as client:
                with Stage("prepare: edges (Dask)", stages):
                    edges = compute_edges(store, prep_cfg.edges, dask, client)
            with Stage("prepare: mask library", stages):
                n_masks, rebuilt = ensure_mask_library(store, prep_cfg.masks)
            with Stage("prepare: pairings", stages):
                counts = write_pairings(store, prep_cfg.pairings)
            prepared = record_prepare(store, prep_cfg, edges, n_masks, rebuilt, counts, t0)
        sizes = {name: du_mib(store / name) for name in ("images", "edges", "masks") if (store / name).exists()}
        total_mib = du_mib(store)
        loaders = []
        for workers in (0, 2):
            with Stage(f"loader ({workers} workers)", stages):
                loaders.append(loader_rate(store, args.loader_batches, args.batch_size, workers))
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    cores = os.cpu_count()
    print(f"scale run: {summary.n_valid} valid patches ({summary.n_patches} rows, {summary.shards_total} shards of 64, "
          f"blocks {cfg.block_shape}) from {dates * len(BENCH_SCENES)} fake Landsat-sized images; {cores} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    for name, st in stages.items():
        print(f"  {name:24s} wall {st['wall_s']:7.1f} s   cpu {st['cpu_s']:7.1f} s")
    export_prepare = stages["export"]["wall_s"] + stages["prepare"]["wall_s"]
    fetched = summary.n_patches - summary.skipped.get("outside", 0)
    print(f"  export + prepare: {export_prepare / 60:.1f} min (target < 10 min); export "
          f"{fetched / stages['export']['wall_s']:.0f} patches fetched/s, {summary.n_valid / stages['export']['wall_s']:.0f} "
          f"valid/s (whole run); fake server CPU {server_cpu:.0f} s, RSS {server_rss:.0f} MiB")
    print(f"  peak RSS: this process {rss_mib:.0f} MiB, loader workers/children {children_mib:.0f} MiB")
    print(f"  store on disk: {total_mib / 1024:.2f} GiB (" + ", ".join(f"{k} {v:.0f} MiB" for k, v in sizes.items())
          + f"); {1024 * total_mib / max(summary.n_valid, 1):.0f} KiB a valid patch")
    print(f"  presence: {json.dumps(presence)}")
    print(f"  prepare: {prepared.shards_computed} shards of edges, {prepared.n_masks} masks, "
          f"{prepared.n_train_images} train images, {prepared.n_validation_pairs}/{prepared.n_test_pairs} "
          "validation/test pairs")
    for lo in loaders:
        print(f"  loader, {lo['workers']} workers: {lo['images_per_s']:.0f} images/s (256 x 256, fresh mask + known edges a "
              f"sample) = {100 * lo['images_per_s'] / GPU_IMAGES_PER_S:.0f}% of the {GPU_IMAGES_PER_S} images/s one GPU "
              "consumes")


if __name__ == "__main__":
    main()
