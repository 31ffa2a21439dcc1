"""Ship a trained run as the default model: slim fp16 weights + MODEL_CARD.md under models/weights/.

    .venv/bin/python scripts/ship_model.py RUN_DIR [STORE] [--name landsat-cpu-v1] [--checkpoint best.pt]

Everything the card says comes from the run's own records (RUN_DIR/config.json, history.jsonl,
metrics.json: machine, shipped step, wall time, validation before and after; models/shipping.py)
and from the store it was trained on (STORE, default: the one config.json names), so this command
alone writes the card again. Scores the checkpoint as shipped (float16) and as trained (float32) on
STORE's validation pairs, the shipped one on the test pairs, all beside the classical fills and
through the deployment path, then writes the card (models/shipping.model_card) and lists the model
as the default. Refuses to ship a model whose validation hole PSNR is below its own harmonic
prefill's or below GDAL FillNodata's in any hole-ratio bin (a model ships only where learning adds,
and never worse than the classical fill users run today), unless --force.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.checkpoint import CheckpointError, read_run_config, run_model_config  # noqa: E402
from models.evaluate import summarise  # noqa: E402
from models.registry import SHIPPED_DIR  # noqa: E402
from models.reporting import save_loss_plot  # noqa: E402
from models.shipping import (CARD, CURVES, RunRecords, margins_over, model_card, reproduce_commands,  # noqa: E402
                             score_for_card, ship_model, training_facts, training_limits)
from pipeline.atomic_io import atomic_write_text  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("store", type=Path, nargs="?", help="the prepared store the run was trained on (validation + "
                   "test splits); default: the store its config.json names")
    p.add_argument("--name", help="shipped name (default: the run's preset, version 1, e.g. landsat-cpu-v1)")
    p.add_argument("--checkpoint", default="best.pt")
    p.add_argument("--dest", type=Path, default=SHIPPED_DIR, help="folder of the shipped models (default: %(default)s)")
    p.add_argument("--pairs-per-bin", type=int, default=None, help="score the first k pairs of every (kind, bin) "
                   "cell (default: all; a quick look only)")
    p.add_argument("--force", action="store_true")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        meta = read_run_config(a.run_dir)
        rec = RunRecords.read(a.run_dir, a.checkpoint)
    except (CheckpointError, OSError, ValueError, KeyError) as exc:  # not a finished run dir
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    name = a.name or f"{run_model_config(meta).name}-v1"
    store = a.store or Path(meta["store"])
    if not store.exists():
        print(f"error: store {store} (from {a.run_dir}/config.json) does not exist: pass the store", file=sys.stderr)
        return 2
    k = a.pairs_per_bin
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = ship_model(a.run_dir, name, checkpoint=a.checkpoint, half=False, dest=Path(tmp), default=True)
        val32 = score_for_card(fp32, store, "validation", k)
        val_fp32 = {r["method"]: r["hole_psnr"] for r in summarise(val32) if r["mask_kind"] == "all"}["model"]
        half = ship_model(a.run_dir, name, checkpoint=a.checkpoint, half=True, dest=Path(tmp) / "half", default=True)
        val = score_for_card(half, store, "validation", k)
        test = score_for_card(half, store, "test", k)
    over_gdal, over_prefill = margins_over(val), margins_over(val, baseline="harmonic")
    print("validation margin over GDAL:", {b: round(v, 3) for b, v in over_gdal.items()})
    print("validation margin over the prefill:", {b: round(v, 3) for b, v in over_prefill.items()})
    worse = [b for b, v in over_gdal.items() if v < 0]
    below_the_bar = over_prefill["all"] <= 0 or bool(worse)
    if below_the_bar and not a.force:
        print(f"refusing to ship: learning adds {over_prefill['all']:+.3f} dB over the prefill on validation; "
              f"bins below GDAL FillNodata: {worse}")
        return 1
    options = ([f"--dest {a.dest}"] if a.dest.resolve() != SHIPPED_DIR.resolve() else []) + \
        ([f"--pairs-per-bin {k}"] if k else []) + (["--force"] if below_the_bar else [])  # what shaped this card
    overall = {r["method"]: r for r in summarise(val) if r["mask_kind"] == "all"}
    metrics = {**{m: v for m, v in overall["model"].items() if m not in ("method", "mask_kind", "ratio_bin")},
               "split": "validation", "baselines_hole_psnr": {m: r["hole_psnr"] for m, r in overall.items()},
               "margin_over_gdal_validation": over_gdal, "margin_over_gdal_test": margins_over(test)}
    out = ship_model(a.run_dir, name, checkpoint=a.checkpoint, half=True, metrics=metrics, dest=a.dest)
    save_loss_plot(a.run_dir, out / CURVES)  # the run's losses and validation curves, linked from the card
    # written last: the card states the shipped file's size and links the curves
    atomic_write_text(out / CARD, model_card(name, a.run_dir, store, val_records=val, test_records=test,
                                             val_fp32_psnr=val_fp32, training=training_facts(rec),
                                             commands=reproduce_commands(rec, name, store, a.dest, options),
                                             notes=training_limits(rec, val), dest=a.dest))
    print(f"shipped {out} in {time.perf_counter() - t0:.0f} s")
    print("test margin over GDAL:", {b: round(v, 3) for b, v in margins_over(test).items()})
    shutil.rmtree(a.dest / name / "__pycache__", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
