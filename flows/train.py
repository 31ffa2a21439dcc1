"""Prefect flows ``train-model`` and ``retrain-model`` (thin: the work is in :mod:`models`).

- ``train-model``: train (in-process, or ``nproc`` > 1 ranks through torchrun launched as a
  subprocess), evaluate through the deployment path on the VALIDATION pairings (the decision)
  and on the test pairings (reported, never decides), register the run in the model registry
  and promote it if it beats the current model on validation ``hole_psnr`` (the first model is
  promoted). Artifacts: training summary with loss plot and sample grid, evaluation tables.
- ``retrain-model``: fine-tune the registry's current model on the latest store, evaluate the
  candidate AND the current model on the same fixed validation pairings, register the candidate
  and promote it only if its validation hole PSNR is higher; otherwise keep the current one and
  say why. Test scores are reported beside it.

Deployments: ``train-model/default`` (the demo preset on ./demo_out/landsat.zarr) and
``retrain-model/nightly`` (cron ``0 3 * * *``, UTC).
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from models.baselines import BASELINES
from models.evaluate import evaluate, model_metrics, record_evaluation, write_report
from models.reporting import overall_rows, training_summary_markdown
from models.registry import PRIMARY_METRIC, current_model, promote_if_better, register_model, resolve_model

DEFAULT_STORE = "./demo_out/landsat.zarr"
DEFAULT_RUN_DIR = "./demo_out/runs/demo"
NIGHTLY_CRON = "0 3 * * *"


@task(name="train")
def train_task(store: str, run_dir: str, config: str | dict, mode: str | None, max_steps: int | None,
               overrides: list[str] | None, nproc: int, init_from: str | None = None) -> dict[str, Any]:
    """One task for the whole run; several ranks = one torchrun subprocess.
    ``config``: a preset name (tiny / full / demo) or a ModelConfig dict."""
    if nproc > 1:
        from models.ddp import launch_torchrun, train_args
        launch_torchrun(store, run_dir, nproc, train_args(config, run_dir=run_dir, mode=mode, max_steps=max_steps,
                                                          overrides=overrides, init_from=init_from))
        return json.loads((Path(run_dir) / "metrics.json").read_text())["training"]
    from models.train import build_config, train
    cfg = build_config(config, mode=mode, max_steps=max_steps, overrides=overrides)
    return asdict(train(store, run_dir, cfg, init_from=init_from, progress=False))


@task(name="evaluate")
def evaluate_task(store: str, model: str, out_dir: str, pairs_per_bin: int | None, baselines: bool = True,
                  split: str = "validation") -> dict:
    methods = ("model",) + (BASELINES if baselines else ())
    result = evaluate(store, model, methods=methods, pairs_per_bin=pairs_per_bin, split=split)
    files = write_report(result, Path(out_dir) / split)
    return {"metrics": model_metrics(result), "files": files, "rows": result.rows, "overall": result.overall}


def _registry_metrics(validation: dict, test: dict) -> dict:
    """Validation metrics decide (top level, e.g. ``hole_psnr``); test metrics ride along."""
    return {**validation["metrics"], "test": test["metrics"]}


def _train_artifacts(summary: dict, evaluation: dict, test: dict, key: str) -> None:
    create_markdown_artifact(key=key, markdown=training_summary_markdown(summary, evaluation["metrics"], key),
                             description="training summary, loss plot, samples")
    create_table_artifact(key=f"{key}-evaluation", table=overall_rows(evaluation["rows"]),
                          description="evaluation on the fixed validation pairings (decides promotion)")
    create_table_artifact(key=f"{key}-test", table=overall_rows(test["rows"]),
                          description="evaluation on the fixed test pairings (reported only)")


@flow(name="train-model", log_prints=True)
def train_model_flow(store: str = DEFAULT_STORE, run_dir: str = DEFAULT_RUN_DIR, config: str = "demo",
                     mode: str | None = None, max_steps: int | None = None, overrides: list[str] | None = None,
                     nproc: int = 1, pairs_per_bin: int | None = 2, add_to_registry: bool = True) -> dict:
    """Train, evaluate, register (+ promote if better). Returns paths and small summaries."""
    summary = train_task(store, run_dir, config, mode, max_steps, overrides, nproc)
    evaluation = evaluate_task(store, run_dir, str(Path(run_dir) / "eval"), pairs_per_bin)
    test = evaluate_task(store, run_dir, str(Path(run_dir) / "eval"), pairs_per_bin, split="test")
    metrics = _registry_metrics(evaluation, test)
    record_evaluation(run_dir, metrics)
    result = {"run_dir": run_dir, "metrics": metrics, "evaluation_files": evaluation["files"],
              "test_files": test["files"]}
    if add_to_registry:
        entry = register_model(run_dir, metrics=metrics)
        current = current_model()
        current_value = None
        if current is not None:  # re-measured on THIS store's validation pairs: stored scores come from other data
            cur = evaluate_task(store, current, str(Path(run_dir) / "eval-current"), pairs_per_bin, baselines=False)
            current_value = cur["metrics"][PRIMARY_METRIC]
        decision = promote_if_better(entry["name"], current_value=current_value)
        print(decision.reason)
        result.update(model=entry["name"], promoted=decision.promoted, reason=decision.reason)
    _train_artifacts(summary, evaluation, test, "train-model")
    return result


@flow(name="retrain-model", log_prints=True)
def retrain_model_flow(store: str = DEFAULT_STORE, out_root: str = "./demo_out/runs", base: str = "current",
                       max_steps: int = 200, overrides: list[str] | None = None, pairs_per_bin: int | None = 2,
                       min_improvement: float = 0.0) -> dict:
    """Fine-tune the current model on ``store``; promote only if better on hole-region PSNR."""
    base_dir = resolve_model(base)
    base_name = current_model() if base == "current" else str(base)
    from models.checkpoint import read_run_config
    preset = read_run_config(base_dir)["model_config"]
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    run_dir = str(Path(out_root) / f"retrain-{stamp}")
    summary = train_task(store, run_dir, preset, None, max_steps, overrides, 1, init_from=str(base_dir))
    cand = evaluate_task(store, run_dir, str(Path(run_dir) / "eval"), pairs_per_bin)
    cand_test = evaluate_task(store, run_dir, str(Path(run_dir) / "eval"), pairs_per_bin, split="test")
    cur = evaluate_task(store, str(base_dir), str(Path(run_dir) / "eval-current"), pairs_per_bin, baselines=False)
    entry = register_model(run_dir, metrics=_registry_metrics(cand, cand_test))
    decision = promote_if_better(entry["name"], current_value=cur["metrics"][PRIMARY_METRIC],
                                 min_improvement=min_improvement)
    print(decision.reason)
    create_markdown_artifact(key="retrain-model", markdown=(
        f"## retrain-model\n\nbase `{base_name}` fine-tuned {summary['steps']} steps on `{store}` -> `{entry['name']}`\n\n"
        f"**{'PROMOTED' if decision.promoted else 'KEPT ' + str(decision.current)}**: {decision.reason}\n"))
    _train_artifacts(summary, cand, cand_test, "retrain-model-run")
    return {"run_dir": run_dir, "candidate": entry["name"], "base": base_name, "promoted": decision.promoted,
            "reason": decision.reason, "candidate_metrics": cand["metrics"], "current_metrics": cur["metrics"]}


def deployments() -> list:
    return [
        train_model_flow.to_deployment(
            name="default", parameters={"store": DEFAULT_STORE, "run_dir": DEFAULT_RUN_DIR, "config": "demo"},
            description="Train the tiny demo model (joint G1+G2, ~3-5 min on 2 CPU cores); use config=full on GPUs"),
        retrain_model_flow.to_deployment(
            name="nightly", cron=NIGHTLY_CRON, parameters={"store": DEFAULT_STORE},
            description="Fine-tune the current model on the latest store; promote only if hole PSNR improves"),
    ]
