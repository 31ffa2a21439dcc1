"""Benchmark scene inpainting: Mpx/s and peak RSS at 1k^2 and 8k^2 (CPU), tiles skipped, GDAL
FillNodata's time on the same scene, and GPU Mpx/s when CUDA is available.

Run: ``.venv/bin/python bench/inpaint.py [--sizes 1024 8192] [--model RUN_DIR] [--out DIR]``

Scenes are mosaics of REAL bundled Landsat 5/7 uint8 scenes (Everest, Raleigh, Montana L5, the
clear SLC-off 4b interior; mirrored tiles) with the REAL SLC-off gap pattern of the ARG25
095/082 scene (its stripes-only part, mirrored) written as DN 0 = fill, in half of the rows
(``--cover bands``, default) or everywhere (``--cover full``: every tile runs). Each size is measured in
a fresh subprocess (peak RSS = ru_maxrss of that process, model load and COG writing
included). Without ``--model`` an untrained tiny model is saved (speed and memory do not depend
on the weights). Target: peak RSS at 8k^2 within 1.3x of 1k^2.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SOURCES = ("LE07_140041_20001030_EVEREST", "LE07_NC_RALEIGH_2000", "LT05_040028_20060706")
STRIPES_WINDOW = (0, 1600, 1000, 1100)  # rows 0-999, cols 1600-2699 of the gap mask: stripes only


def _mirror_tile(a: np.ndarray, h: int, w: int, r0: int, c0: int) -> np.ndarray:
    """Rows [r0, r0+h) x cols [c0, c0+w) of the infinite mirror-tiling of ``a`` (..., H, W)."""
    H, W = a.shape[-2:]
    rows = np.arange(r0, r0 + h) % (2 * H)
    rows = np.where(rows < H, rows, 2 * H - 1 - rows)
    cols = np.arange(c0, c0 + w) % (2 * W)
    cols = np.where(cols < W, cols, 2 * W - 1 - cols)
    return a[..., rows[:, None], cols[None, :]]


def build_scene(path: Path, size: int, cover: str = "bands") -> float:
    """Write a size x size uint8 RGB mosaic with the real gap pattern (DN 0); returns hole fraction.

    ``cover="full"``: stripes everywhere (every tile runs, the worst case); ``"bands"``: stripes
    only in rows [512, 1536) mod 2048 (half of the rows, at every size), so tiles are skipped
    in the same proportion at 1k and 8k and the 8k run stays a few minutes on 2 cores."""
    import rasterio
    from rasterio.windows import Window

    from models.scene_demo import GAP_MASK
    from pipeline.scenes import read_scene

    crops = []
    for sid in SOURCES:
        s = read_scene(sid)
        rows, cols = np.nonzero(s.valid)
        r0, r1, c0, c1 = rows.min() + 2, rows.max() - 2, cols.min() + 2, cols.max() - 2
        rgb = s.rgb[:, r0:r1, c0:c1]
        ok = (rgb > 0).all(axis=0)
        rgb = np.where(ok[None], rgb, 1).astype(np.uint8)  # no DN 0 left inside the mosaic
        crops.append(rgb[:, :512, :512])
    with rasterio.open(GAP_MASK) as g:
        r, c, h, w = STRIPES_WINDOW
        gaps = g.read(1, window=Window(c, r, w, h)) == 255
    holes = 0
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:32645",
                   transform=rasterio.transform.from_origin(478000, 3108140, 30, 30), nodata=0, tiled=True,
                   blockxsize=256, blockysize=256, compress="LZW")
    with rasterio.open(path, "w", **profile) as dst:
        for r0 in range(0, size, 512):
            h = min(512, size - r0)
            strip = np.zeros((3, h, size), np.uint8)
            for k, c0 in enumerate(range(0, size, 512)):
                crop = crops[(r0 // 512 + k) % len(crops)]
                w = min(512, size - c0)
                strip[:, :, c0:c0 + w] = _mirror_tile(crop, h, w, r0 % 512, 0)
            hole = _mirror_tile(gaps, h, size, r0, 0)
            if cover == "bands":
                hole &= ((np.arange(r0, r0 + h) - 512) % 2048 < 1024)[:, None]
            strip[:, hole] = 0
            holes += int(hole.sum())
            dst.write(strip, window=Window(0, r0, size, h))
        for i, name in enumerate(("B3", "B2", "B1"), start=1):
            dst.set_band_description(i, name)
    return holes / size ** 2


def child(args) -> None:
    """Measured in a fresh process: inpaint one scene, print JSON."""
    import resource

    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    from models.inpaint_scene import InpaintSceneConfig, inpaint_scene

    t0 = time.perf_counter()
    summary = inpaint_scene(InpaintSceneConfig(input=args.scene, output=args.output, model=args.model,
                                               device=args.device, batch_size=args.batch_size))
    seconds = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "mpx_s": summary.width * summary.height / 1e6 / seconds,
                      "peak_rss_mb": rss_mb, "tiles_total": summary.tiles_total, "tiles_run": summary.tiles_run,
                      "skipped_fraction": summary.skipped_fraction, "filled_fraction": summary.filled_fraction}))


def fillnodata_seconds(scene: Path) -> float:
    import rasterio
    from rasterio.fill import fillnodata

    with rasterio.open(scene) as src:
        t0 = time.perf_counter()
        valid = src.dataset_mask()
        for b in (1, 2, 3):
            fillnodata(src.read(b), mask=valid, max_search_distance=100, smoothing_iterations=0)
        return time.perf_counter() - t0


def tiny_model(out: Path) -> Path:
    import torch

    from models.checkpoint import save_inference_bundle
    from models.config import ModelConfig
    from models.networks import EdgeGenerator, InpaintGenerator

    torch.manual_seed(0)
    cfg = ModelConfig.tiny()
    return save_inference_bundle(out / "tiny-bench", edge_generator=EdgeGenerator(cfg),
                                 inpaint_generator=InpaintGenerator(cfg), model_config=cfg, name="tiny-bench")


def measure(scene: Path, out: Path, model: str, device: str, batch_size: int) -> dict:
    cmd = [sys.executable, __file__, "--child", "--scene", str(scene), "--output", str(out), "--model", model,
           "--device", device] + (["--batch-size", str(batch_size)] if batch_size else [])
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if res.returncode:
        raise RuntimeError(f"child failed: {res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 8192])
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--batch-size", type=int, default=None, help="default: 4 CPU, 32 CUDA")
    ap.add_argument("--gpu-sizes", type=int, nargs="*", default=None, help="sizes for the CUDA run (default: all)")
    ap.add_argument("--cover", choices=["bands", "full"], default="bands",
                    help="gap stripes in half of the rows (default) or everywhere (worst case)")
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--scene"), ap.add_argument("--output"), ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.child:
        return child(args)
    import torch

    work = args.out or Path(tempfile.mkdtemp(prefix="edgefill-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    model = args.model or str(tiny_model(work))
    rows = []
    for size in args.sizes:
        scene = work / f"mosaic_{size}.tif"
        t0 = time.perf_counter()
        hole = build_scene(scene, size, args.cover)
        build_s = time.perf_counter() - t0
        cpu = measure(scene, work / f"out_cpu_{size}.tif", model, "cpu", args.batch_size)
        fill_s = fillnodata_seconds(scene)
        row = {"size": size, "hole_fraction": hole, "build_s": build_s, "cpu": cpu, "fillnodata_s": fill_s,
               "fillnodata_mpx_s": size * size / 1e6 / fill_s}
        if torch.cuda.is_available() and (args.gpu_sizes is None or size in args.gpu_sizes):
            row["cuda"] = measure(scene, work / f"out_cuda_{size}.tif", model, "cuda", args.batch_size)
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = rows[0]
    print(f"\nscene inpainting benchmark (model {Path(model).name}, {torch.get_num_threads()} CPU threads, "
          f"gap cover {args.cover})")
    print(f"{'size':>6} {'holes':>6} {'tiles run':>10} {'skipped':>8} {'CPU Mpx/s':>10} {'peak RSS MB':>12} "
          f"{'RSS ratio':>9} {'FillNodata s':>12} {'model/FillNodata time':>22} {'CUDA Mpx/s':>10}")
    for r in rows:
        c = r["cpu"]
        cuda = f"{r['cuda']['mpx_s']:.2f}" if "cuda" in r else "-"
        print(f"{r['size']:>6} {r['hole_fraction']:>6.1%} {c['tiles_run']:>4}/{c['tiles_total']:<5} "
              f"{c['skipped_fraction']:>8.1%} {c['mpx_s']:>10.3f} {c['peak_rss_mb']:>12.0f} "
              f"{c['peak_rss_mb'] / base['cpu']['peak_rss_mb']:>9.2f} {r['fillnodata_s']:>12.2f} "
              f"{c['seconds'] / r['fillnodata_s']:>22.1f} {cuda:>10}")
    if len(rows) > 1:
        ratio = rows[-1]["cpu"]["peak_rss_mb"] / base["cpu"]["peak_rss_mb"]
        print(f"peak RSS {rows[-1]['size']}^2 / {base['size']}^2 = {ratio:.2f}x (target <= 1.3x): "
              f"{'OK' if ratio <= 1.3 else 'OVER'}")


if __name__ == "__main__":
    main()
