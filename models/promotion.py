"""Training runs into the model registry: the train-model and retrain-model policies.

- :func:`train_and_register` (flow ``train-model``): train a :class:`~models.config.TrainRunConfig`,
  evaluate the run through the deployment path on the VALIDATION pairings (the decision) and on
  the test pairings (reported, never decides), record both in ``RUN_DIR/metrics.json``, register
  the run and promote it if it beats the current model on validation ``hole_psnr``, the current
  model re-measured on the same pairs (the first model is promoted).
- :func:`retrain` (flow ``retrain-model``, :class:`~models.config.RetrainConfig`): fine-tune the
  ``base`` model (default the registry's current one) in its own ModelConfig on the latest store,
  evaluate the candidate AND the base on the same fixed validation pairings, register the
  candidate and promote it only if its validation hole PSNR is higher by more than
  ``min_improvement``; otherwise keep the current model and say why. Test scores ride along.

Both take the training and evaluation steps as functions (``train``: TrainRunConfig -> training
summary dict; ``evaluate``: EvaluateConfig -> :func:`evaluation_summary`'s dict), so the Prefect
flows pass their tasks and every step is a task run; by default they run in this process.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.config import EvaluateConfig, RetrainConfig, TrainRunConfig
from models.registry import PRIMARY_METRIC, current_model, promote_if_better, register_model, resolve_model

TrainFn = Callable[[TrainRunConfig], dict]
EvaluateFn = Callable[[EvaluateConfig], dict]


def train_run(cfg: TrainRunConfig) -> dict:
    """Default ``train`` step: :func:`models.train.run_training`."""
    from models.train import run_training

    return run_training(cfg)


def evaluation_summary(cfg: EvaluateConfig) -> dict:
    """Default ``evaluate`` step: :func:`models.evaluate.evaluate_run` as a small dict: the model's
    overall ``metrics``, the report ``files``, the table ``rows`` and ``overall`` per method."""
    from models.evaluate import evaluate_run, model_metrics

    result, files = evaluate_run(cfg)
    return {"metrics": model_metrics(result), "files": files, "rows": result.rows, "overall": result.overall}


@dataclass
class Outcome:
    """What a policy did: ``result`` (what the flow returns), the training ``summary``, the
    ``validation`` and ``test`` evaluations of the new run, and the ``reason`` of the decision."""

    result: dict[str, Any]
    summary: dict
    validation: dict
    test: dict
    reason: str | None = None
    markdown: str | None = None


def registry_metrics(validation: dict, test: dict) -> dict:
    """Validation metrics decide (top level, e.g. ``hole_psnr``); test metrics ride along."""
    return {**validation["metrics"], "test": test["metrics"]}


def _evaluate_run_dir(evaluate: EvaluateFn, store: Path, model: str, out: Path, pairs_per_bin: int | None,
                      split: str = "validation", baselines: bool = True) -> dict:
    return evaluate(EvaluateConfig(store=store, model=model, out=out / split, pairs_per_bin=pairs_per_bin,
                                   split=split, baselines=baselines))


def train_and_register(cfg: TrainRunConfig, *, pairs_per_bin: int | None = 2, add_to_registry: bool = True,
                       train: TrainFn = train_run, evaluate: EvaluateFn = evaluation_summary) -> Outcome:
    """Train, evaluate (validation decides, test is reported), register and promote if better."""
    from models.evaluate import record_evaluation

    run_dir = Path(cfg.out)
    summary = train(cfg)
    validation = _evaluate_run_dir(evaluate, cfg.store, str(run_dir), run_dir / "eval", pairs_per_bin)
    test = _evaluate_run_dir(evaluate, cfg.store, str(run_dir), run_dir / "eval", pairs_per_bin, split="test")
    metrics = registry_metrics(validation, test)
    record_evaluation(run_dir, metrics)
    result = {"run_dir": str(run_dir), "metrics": metrics, "evaluation_files": validation["files"],
              "test_files": test["files"]}
    reason = None
    if add_to_registry:
        entry = register_model(run_dir, metrics=metrics)
        current = current_model()
        current_value = None
        if current is not None:  # re-measured on THIS store's validation pairs: stored scores come from other data
            cur = _evaluate_run_dir(evaluate, cfg.store, current, run_dir / "eval-current", pairs_per_bin,
                                    baselines=False)
            current_value = cur["metrics"][PRIMARY_METRIC]
        decision = promote_if_better(entry["name"], current_value=current_value)
        reason = decision.reason
        result.update(model=entry["name"], promoted=decision.promoted, reason=decision.reason)
    return Outcome(result=result, summary=summary, validation=validation, test=test, reason=reason)


def retrain(cfg: RetrainConfig, *, train: TrainFn = train_run, evaluate: EvaluateFn = evaluation_summary,
            now: dt.datetime | None = None) -> Outcome:
    """Fine-tune ``cfg.base`` on ``cfg.store``; promote the candidate only if better on validation
    hole PSNR than the base re-measured on the same pairs."""
    from models.checkpoint import read_run_config
    from models.reporting import retrain_markdown

    base_dir = resolve_model(cfg.base)
    base_name = current_model() if cfg.base == "current" else str(cfg.base)
    stamp = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%dT%H%M%S")
    run_dir = Path(cfg.out_root) / f"retrain-{stamp}"
    summary = train(TrainRunConfig(store=cfg.store, out=run_dir, model=read_run_config(base_dir)["model_config"],
                                   max_steps=cfg.max_steps, overrides=cfg.overrides, init_from=str(base_dir),
                                   progress=False))
    cand = _evaluate_run_dir(evaluate, cfg.store, str(run_dir), run_dir / "eval", cfg.pairs_per_bin)
    cand_test = _evaluate_run_dir(evaluate, cfg.store, str(run_dir), run_dir / "eval", cfg.pairs_per_bin,
                                  split="test")
    cur = _evaluate_run_dir(evaluate, cfg.store, str(base_dir), run_dir / "eval-current", cfg.pairs_per_bin,
                            baselines=False)
    entry = register_model(run_dir, metrics=registry_metrics(cand, cand_test))
    decision = promote_if_better(entry["name"], current_value=cur["metrics"][PRIMARY_METRIC],
                                 min_improvement=cfg.min_improvement)
    result = {"run_dir": str(run_dir), "candidate": entry["name"], "base": base_name, "promoted": decision.promoted,
              "reason": decision.reason, "candidate_metrics": cand["metrics"], "current_metrics": cur["metrics"]}
    markdown = retrain_markdown(base_name, summary["steps"], str(cfg.store), entry["name"], decision.promoted,
                                decision.current, decision.reason)
    return Outcome(result=result, summary=summary, validation=cand, test=cand_test, reason=decision.reason,
                   markdown=markdown)
