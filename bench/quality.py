"""Benchmark: fill quality on the project's TEST scenes, through the deployment path.

    python bench/quality.py [--model current] [--store bench_out/quality.zarr] [--pairs-per-bin N]

Builds (or reuses) the store the shipped model was trained on - every bundled real scene, 256 px
patches every 128 px, the Everest holdout in test (`edgefill export --source local --stride 128
--include-holdout --shard-patches 64`, then `edgefill prepare`) - and scores the model beside
GDAL FillNodata, OpenCV Telea and Navier-Stokes and the harmonic prefill on the fixed TEST
pairings (scenes never trained on and never used for a decision): hole PSNR, hole SSIM, hole L1
and composite SSIM, by hole-ratio bin and by mask kind. Not a test: it prints ratios against
baselines measured in the same run. The last line is the model's hole-PSNR margin over GDAL
FillNodata per bin (dB), and its mean over the bins.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.baselines import BASELINES  # noqa: E402
from models.evaluate import ModelFill, by_bin, markdown_table, score_pairs, select_pairs, summarise  # noqa: E402
from models.shipping import margins_over  # noqa: E402
from pipeline.dataset import EvalPairs  # noqa: E402

COLS = ["method", "ratio_bin", "n", "hole_psnr", "hole_ssim", "hole_l1", "comp_ssim"]


def ensure_store(path: Path) -> Path:
    """The shipped model's data: export + prepare (both resume, so a rerun costs nothing)."""
    from pipeline.export import export_landsat
    from pipeline.export_config import ExportConfig
    from pipeline.prepare import prepare_store

    export_landsat(ExportConfig(source="local", out=path, stride=128, shard_patches=64, include_holdout=True))
    prepare_store(path)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="current", help="run dir or registry name (default: current = the shipped model)")
    p.add_argument("--store", type=Path, default=ROOT / "bench_out" / "quality.zarr")
    p.add_argument("--split", default="test", choices=["test", "validation"])
    p.add_argument("--pairs-per-bin", type=int, default=None, help="first k pairs per (kind, bin) cell (default all)")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    ensure_store(a.store)
    ds = EvalPairs(a.store, a.split)
    keep = select_pairs(ds, a.pairs_per_bin)
    model = ModelFill.load(a.model)
    records = score_pairs(ds, keep, model, ("model",) + BASELINES)
    print(f"# {a.split} split of {a.store}: {len(keep)} fixed pairs, model {model.name}, deployment path "
          f"({time.perf_counter() - t0:.0f} s)\n")
    print("## By hole-ratio bin (every mask kind)\n")
    print(markdown_table([r for r in by_bin(records)], COLS))
    print("## By mask kind (every bin)\n")
    print(markdown_table([r for r in summarise(records) if r["ratio_bin"] == "all"],
                         ["method", "mask_kind", *COLS[2:]]))
    slc = [r for r in summarise(records) if r["mask_kind"] in ("slc_off", "slc_off_real") and r["ratio_bin"] == "all"]
    gdal = {r["mask_kind"]: r["hole_psnr"] for r in slc if r["method"] == "gdal"}
    for r in slc:
        if r["method"] == "model":
            print(f"SLC-off ({r['mask_kind']}): model {r['hole_psnr']:.2f} dB vs GDAL FillNodata "
                  f"{gdal[r['mask_kind']]:.2f} dB ({r['hole_psnr'] - gdal[r['mask_kind']]:+.2f})")
    margins = {b: v for b, v in margins_over(records).items() if b != "all"}
    mean = sum(margins.values()) / len(margins)
    print("margin_over_gdal_db " + " ".join(f"{b}={v:+.2f}" for b, v in margins.items()) + f" mean={mean:+.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
