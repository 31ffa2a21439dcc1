"""Ship a trained run as the default model: slim fp16 weights + MODEL_CARD.md under models/weights/.

    .venv/bin/python scripts/ship_model.py RUN_DIR STORE --name landsat-cpu-v1 [--checkpoint best.pt]

Scores the checkpoint as shipped (float16) and as trained (float32) on STORE's validation pairs,
the shipped one on the test pairs, all beside the classical fills and through the deployment
path, then writes the card (models/shipping.model_card) and lists the model as the default.
Refuses to ship a model whose validation hole PSNR is below its own harmonic prefill's or below
GDAL FillNodata's in any hole-ratio bin (a model ships only where learning adds, and never
worse than the classical fill users run today), unless --force.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.evaluate import summarise  # noqa: E402
from models.reporting import save_loss_plot  # noqa: E402
from models.shipping import CARD, CURVES, margins_over, model_card, score_for_card, ship_model  # noqa: E402
from pipeline.atomic_io import atomic_write_text  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("store", type=Path, help="the prepared store the run was trained on (validation + test splits)")
    p.add_argument("--name", required=True)
    p.add_argument("--checkpoint", default="best.pt")
    p.add_argument("--training", type=Path, help="JSON of training facts for the card (steps, wall time, machine, ...)")
    p.add_argument("--force", action="store_true")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = ship_model(a.run_dir, a.name, checkpoint=a.checkpoint, half=False, dest=Path(tmp), default=True)
        val32 = score_for_card(fp32, a.store, "validation", None)
        val_fp32 = {r["method"]: r["hole_psnr"] for r in summarise(val32) if r["mask_kind"] == "all"}["model"]
        half = ship_model(a.run_dir, a.name, checkpoint=a.checkpoint, half=True, dest=Path(tmp) / "half", default=True)
        val = score_for_card(half, a.store, "validation", None)
        test = score_for_card(half, a.store, "test", None)
        over_gdal, over_prefill = margins_over(val), margins_over(val, baseline="harmonic")
        print("validation margin over GDAL:", {k: round(v, 3) for k, v in over_gdal.items()})
        print("validation margin over the prefill:", {k: round(v, 3) for k, v in over_prefill.items()})
        worse = [b for b, v in over_gdal.items() if v < 0]
        if (over_prefill["all"] <= 0 or worse) and not a.force:
            print(f"refusing to ship: learning adds {over_prefill['all']:+.3f} dB over the prefill on validation; "
                  f"bins below GDAL FillNodata: {worse}")
            return 1
        training = json.loads(a.training.read_text()) if a.training else {}
        commands = training.pop("commands", [])
        notes = training.pop("limits", [])
        overall = {r["method"]: r for r in summarise(val) if r["mask_kind"] == "all"}
        metrics = {**{k: v for k, v in overall["model"].items() if k not in ("method", "mask_kind", "ratio_bin")},
                   "split": "validation", "baselines_hole_psnr": {m: r["hole_psnr"] for m, r in overall.items()},
                   "margin_over_gdal_validation": over_gdal, "margin_over_gdal_test": margins_over(test)}
        out = ship_model(a.run_dir, a.name, checkpoint=a.checkpoint, half=True, metrics=metrics)
        save_loss_plot(a.run_dir, out / CURVES)  # the run's losses and validation curves, linked from the card
        # written last: the card states the shipped file's size and links the curves
        atomic_write_text(out / CARD, model_card(a.name, a.run_dir, a.store, val_records=val, test_records=test,
                                                 val_fp32_psnr=val_fp32, training=training, commands=commands,
                                                 notes=notes))
    print(f"shipped {out} in {time.perf_counter() - t0:.0f} s")
    print("test margin over GDAL:", {k: round(v, 3) for k, v in margins_over(test).items()})
    shutil.rmtree(ROOT / "models" / "weights" / a.name / "__pycache__", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
