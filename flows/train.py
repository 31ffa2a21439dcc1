"""Prefect flows ``train-model`` and ``retrain-model`` (thin: the work and the policies are in
:mod:`models.promotion`).

- ``train-model``: :func:`models.promotion.train_and_register` over a
  :class:`~models.config.TrainRunConfig` (in-process, or ``nproc`` > 1 ranks through torchrun
  launched as a subprocess): train, evaluate on the validation pairings (the decision) and the test
  pairings (reported), register, promote if better. Artifacts: training summary with loss plot and
  sample grid, evaluation tables.
- ``retrain-model``: :func:`models.promotion.retrain` over a :class:`~models.config.RetrainConfig`:
  fine-tune the current model on the latest store, promote only if better on validation hole PSNR.

Each flow's ``config`` parameter is the stage's config (Prefect validates it and shows its fields
in the UI); its defaults are the demo's. The training and evaluation steps run as the tasks
``train`` and ``evaluate`` (passed to the policies). Deployments: ``train-model/default`` (the demo
preset on ./demo_out/landsat.zarr; ``-p config='{"max_steps": 600}'``, ``-p config='{"model":
"full", "nproc": 4}'`` on a GPU worker) and ``retrain-model/nightly`` (cron ``0 3 * * *``, UTC).
"""
from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.schedules import Cron

from models.config import EvaluateConfig, RetrainConfig, TrainRunConfig
from models.promotion import Outcome, evaluation_summary, retrain, train_and_register
from models.reporting import overall_rows, training_summary_markdown

NIGHTLY_CRON = "0 3 * * *"
NIGHTLY_TIMEZONE = "UTC"  # stated in the deployment (and the UI), not left to the server's default


@task(name="train")
def train_task(config: TrainRunConfig) -> dict:
    """One task for the whole run; several ranks = one torchrun subprocess. No progress bar in a flow."""
    from models.train import run_training

    return run_training(config.model_copy(update={"progress": False}))


@task(name="evaluate")
def evaluate_task(config: EvaluateConfig) -> dict:
    return evaluation_summary(config)


def _train_artifacts(outcome: Outcome, key: str) -> None:
    create_markdown_artifact(key=key, markdown=training_summary_markdown(outcome.summary,
                                                                         outcome.validation["metrics"], key),
                             description="training summary, loss plot, samples")
    create_table_artifact(key=f"{key}-evaluation", table=overall_rows(outcome.validation["rows"]),
                          description="evaluation on the fixed validation pairings (decides promotion)")
    create_table_artifact(key=f"{key}-test", table=overall_rows(outcome.test["rows"]),
                          description="evaluation on the fixed test pairings (reported only)")


@flow(name="train-model", log_prints=True)
def train_model_flow(config: TrainRunConfig = TrainRunConfig(), pairs_per_bin: int | None = 2,
                     add_to_registry: bool = True) -> dict:
    """Train, evaluate, register (+ promote if better). Returns paths and small summaries.
    ``pairs_per_bin``: pairs per (kind, bin) cell of the evaluations that follow training."""
    outcome = train_and_register(config, pairs_per_bin=pairs_per_bin, add_to_registry=add_to_registry,
                                 train=train_task, evaluate=evaluate_task)
    if outcome.reason:
        print(outcome.reason)
    _train_artifacts(outcome, "train-model")
    return outcome.result


@flow(name="retrain-model", log_prints=True)
def retrain_model_flow(config: RetrainConfig = RetrainConfig()) -> dict:
    """Fine-tune the current model on ``config.store``; promote only if better on hole-region PSNR."""
    outcome = retrain(config, train=train_task, evaluate=evaluate_task)
    print(outcome.reason)
    create_markdown_artifact(key="retrain-model", markdown=outcome.markdown)
    _train_artifacts(outcome, "retrain-model-run")
    return outcome.result


def deployments() -> list:
    return [
        train_model_flow.to_deployment(
            name="default",
            description="Train the demo model (the config's defaults: demo preset, joint G1+G2, ~3-5 min on 2 CPU "
                        "cores) on ./demo_out/landsat.zarr; -p config='{\"max_steps\": 600}' to train longer, "
                        "-p config='{\"model\": \"full\", \"nproc\": 4}' on GPUs"),
        retrain_model_flow.to_deployment(
            name="nightly", schedule=Cron(NIGHTLY_CRON, timezone=NIGHTLY_TIMEZONE),
            description="Fine-tune the current model on the latest store; promote only if hole PSNR improves"),
    ]
