"""Benchmark: prepare (OpenCV Canny in Dask over whole shards + pairings + sharded Zarr writes)
versus a naive per-patch loop (skimage canny, one PNG per patch, Python pairing loop), both
measured in this run on REAL patches (the bundled scenes tiled at stride 128 and repeated).

    .venv/bin/python bench/prepare.py [--patches 2048] [--naive 256] [--threads 2]

Prints patches/s, patches/s per core, the ratio, an EXTRAPOLATED time for 60,000 patches, and
where one shard's CPU time goes (whole-shard read / edges / write, versus zarr's per-chunk path).
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from skimage.feature import canny  # noqa: E402

from pipeline.edges import rgb_to_gray  # noqa: E402
from pipeline.masks import RATIO_BINS  # noqa: E402
from pipeline.masks.library import MaskKindSpec, MaskLibraryConfig  # noqa: E402
from pipeline.pairings import PairingConfig  # noqa: E402
from pipeline.prepare import DaskConfig, compute_edges, dask_client, ensure_mask_library, write_pairings  # noqa: E402
from pipeline.edges import edges_for_stored  # noqa: E402
from pipeline.scenes import read_scene, scenes_with_role  # noqa: E402
from pipeline.shard_io import read_shard, write_shard  # noqa: E402
from pipeline.store import Radiometry, create_store, open_store, read_meta  # noqa: E402


def real_tiles(size: int = 256, stride: int = 128) -> np.ndarray:
    tiles = []
    for entry in scenes_with_role("train", "test", "holdout", "slc_off"):
        s = read_scene(entry)
        h, w = s.valid.shape
        for r in range(0, h - size + 1, stride):
            for c in range(0, w - size + 1, stride):
                if s.valid[r:r + size, c:c + size].all():
                    tiles.append(s.rgb[:, r:r + size, c:c + size])
    return np.stack(tiles)


def build_store(path: Path, images: np.ndarray, shard: int) -> None:
    n = len(images)
    g = create_store(path, n_patches=n, shard_patches=shard, bands=["red", "green", "blue"],
                     radiometry=Radiometry(), source="bench", export_config={"bench": n})
    g["images"][:] = images
    g["valid"][:] = True
    g["split"][:] = np.where(np.arange(n) % 5 == 0, "test", "train")
    g["export_done"][:] = 1


def naive(store: Path, n: int, out_dir: Path, n_masks: int) -> float:
    """Per patch: read, skimage canny (sigma 2), write a PNG; then a Python pairing loop."""
    g = open_store(store)
    images = g["images"]
    t0 = time.perf_counter()
    for i in range(n):
        rgb = images[i].astype(np.float32) / 255.0
        edges = canny(rgb_to_gray(rgb).astype(np.float64), sigma=2.0)
        cv2.imwrite(str(out_dir / f"edges_{i:06d}.png"), edges.astype(np.uint8) * 255)
    rng = random.Random(0)
    rows = [(i, rng.randrange(n_masks), rng.randrange(8)) for i in range(n) for _ in range(4)]
    with open(out_dir / "pairings.csv", "w") as f:
        f.writelines(f"{a},{b},{c}\n" for a, b, c in rows)
    return time.perf_counter() - t0


def breakdown(store: Path, reps: int = 5) -> str:
    """CPU ms per patch of each step on shard 0 (single thread, best of ``reps``), and zarr's own
    slicing (one asyncio task + thread hop per 1-patch chunk) for reference."""
    g = open_store(store, "r+", require=("images", "edges"))
    s = read_meta(g).shard_patches
    to_unit = Radiometry().to_unit

    def cpu(fn):
        best = float("inf")
        for _ in range(reps):
            c0 = time.process_time()
            out = fn()
            best = min(best, time.process_time() - c0)
        return out, best * 1000 / s

    images, t_read = cpu(lambda: read_shard(g["images"], 0))
    edges, t_edges = cpu(lambda: edges_for_stored(images, to_unit))
    _, t_write = cpu(lambda: write_shard(g["edges"], 0, edges))
    _, t_zread = cpu(lambda: g["images"][:s])
    _, t_zwrite = cpu(lambda: g["edges"].__setitem__(slice(0, s), edges))
    return (f"per patch, CPU ms (1 thread): read shard {t_read:.2f} (zarr slicing {t_zread:.2f}), "
            f"edges {t_edges:.2f}, write shard {t_write:.2f} (zarr slicing {t_zwrite:.2f})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patches", type=int, default=2048)
    ap.add_argument("--naive", type=int, default=256, help="patches for the (slow) naive loop")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shard", type=int, default=64)
    args = ap.parse_args()
    tiles = real_tiles()
    images = tiles[np.arange(args.patches) % len(tiles)]
    print(f"{len(tiles)} distinct real 256x256 tiles, repeated to {len(images)} patches; "
          f"{os.cpu_count()} CPUs, {args.threads} Dask threads")
    tmp = Path(tempfile.mkdtemp(prefix="edgefill-bench-"))
    try:
        store = tmp / "bench.zarr"
        build_store(store, images, args.shard)
        masks = MaskLibraryConfig(kinds=[MaskKindSpec(kind="irregular", count=50),
                                         MaskKindSpec(kind="slc_off", count=30, bins=list(RATIO_BINS[:3]))])
        ensure_mask_library(store, masks)  # one-off, independent of N: not timed
        dask = DaskConfig(n_workers=1, threads_per_worker=args.threads)
        with dask_client(dask) as client:  # cluster start-up (~1-2 s) is not per patch: not timed
            t0, c0 = time.perf_counter(), time.process_time()
            summary = compute_edges(store, dask=dask, client=client)
            t_edges = time.perf_counter() - t0
            write_pairings(store, PairingConfig(require_bins=["irregular"]))
            t_ours, cpu_ours = time.perf_counter() - t0, time.process_time() - c0
        assert summary["shards_computed"] == -(-args.patches // args.shard)
        naive_dir = tmp / "naive"
        naive_dir.mkdir()
        c0 = time.process_time()
        t_naive = naive(store, args.naive, naive_dir, 80)
        cpu_naive = time.process_time() - c0
        steps = breakdown(store)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ours_rate, naive_rate = args.patches / t_ours, args.naive / t_naive
    ours_cpu_rate, naive_cpu_rate = args.patches / cpu_ours, args.naive / cpu_naive
    cores = min(args.threads, os.cpu_count() or 1)
    print(f"ours : {args.patches} patches, wall {t_ours:.2f} s (edges {t_edges:.2f} s), CPU {cpu_ours:.2f} s "
          f"-> {ours_rate:.0f} patches/s wall, {ours_cpu_rate:.0f} patches per CPU-second")
    print(f"naive: {args.naive} patches, wall {t_naive:.2f} s, CPU {cpu_naive:.2f} s "
          f"-> {naive_rate:.0f} patches/s wall, {naive_cpu_rate:.0f} patches per CPU-second")
    print(f"speed-up per core (CPU time): {ours_cpu_rate / naive_cpu_rate:.1f}x; wall: {ours_rate / naive_rate:.1f}x "
          f"({cores} threads vs 1; wall ratios suffer when other jobs share the cores)")
    print(f"EXTRAPOLATED 60,000 patches on {cores} free cores: ours {60000 / (cores * ours_cpu_rate):.0f} s, "
          f"naive (1 core) {60000 / naive_cpu_rate:.0f} s; at this run's wall rate: ours {60000 / ours_rate:.0f} s")
    print(steps)


if __name__ == "__main__":
    main()
