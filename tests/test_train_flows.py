"""Prefect flows train-model / retrain-model (real Prefect, real store, tmp registry) + CLI."""
from __future__ import annotations

import json

import pytest

from models.registry import current_model, load_index

pytest_plugins = ["models_support"]  # fixtures registered once per session (not per importing module)
pytestmark = pytest.mark.usefixtures("single_thread")
FAST = ["train.batch_size=2", "train.crop_size=64", "schedule.mape_patches=2"]


@pytest.mark.slow
def test_train_then_retrain_promotes_only_if_better(prefect_harness, prepared_store, tmp_path, monkeypatch):
    import models.registry as reg
    from flows.train import retrain_model_flow, train_model_flow
    from models.config import RetrainConfig, TrainRunConfig

    monkeypatch.setenv("EDGEFILL_REGISTRY", str(tmp_path / "registry"))
    monkeypatch.setattr(reg, "SHIPPED_DIR", tmp_path / "no-shipped-model")  # a user's first model
    run_dir = tmp_path / "runs" / "first"
    out = train_model_flow(TrainRunConfig(store=prepared_store, out=run_dir, model="tiny", mode="joint",
                                          max_steps=4, overrides=FAST), pairs_per_bin=1)
    assert out["promoted"] and current_model() == out["model"] == "tiny-v1"
    assert out["metrics"]["split"] == "validation" and out["metrics"]["test"]["split"] == "test"  # test: reported only
    assert (run_dir / "eval" / "validation" / "evaluation.md").exists() and (run_dir / "eval" / "test" / "evaluation.md").exists()
    assert json.loads((run_dir / "metrics.json").read_text())["evaluation"]["hole_psnr"] == out["metrics"]["hole_psnr"]

    res = retrain_model_flow(RetrainConfig(store=prepared_store, out_root=tmp_path / "runs", max_steps=2,
                                           overrides=FAST, pairs_per_bin=1))
    cand, cur = res["candidate_metrics"]["hole_psnr"], res["current_metrics"]["hole_psnr"]
    assert res["base"] == "tiny-v1" and res["candidate"] == "tiny-v2"
    assert res["promoted"] == (cand > cur)
    assert current_model() == ("tiny-v2" if cand > cur else "tiny-v1")
    assert ("keeping tiny-v1" in res["reason"]) != res["promoted"]
    # the fine-tune started from the current model's weights, in the base's config
    meta = json.loads((tmp_path / "runs" / res["run_dir"].split("/")[-1] / "config.json").read_text())
    assert meta["model_config"]["base_channels"] == 16 and meta["model_config"]["train"]["max_steps"] == 2
    assert "tiny-v2" in load_index()["models"]

    from prefect.client.orchestration import get_client
    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts()}
    assert {"train-model", "train-model-evaluation", "train-model-test", "retrain-model"} <= keys


def test_nightly_deployment_runs_at_the_documented_03_00_utc():
    """The README documents the nightly retraining at 03:00 UTC: the deployment must say exactly that
    (a schedule without a time zone would follow the server's or worker's local time)."""
    from pathlib import Path

    from flows.train import deployments
    from models.config import TrainRunConfig

    deps = {d.name: d for d in deployments()}
    assert set(deps) == {"default", "nightly"}
    assert TrainRunConfig.model_validate(deps["default"].parameters.get("config", {})).model == "demo"
    assert deps["default"].schedules in (None, [])
    (schedule,) = deps["nightly"].schedules
    assert schedule.schedule.cron == "0 3 * * *" and schedule.schedule.timezone == "UTC"
    assert deps["nightly"].flow_name == "retrain-model"
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "`retrain-model/nightly` (cron 03:00 UTC" in readme


def test_cli_train_and_evaluate_bad_input_exit_cleanly(real_store, tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    r = CliRunner().invoke(app, ["train", str(real_store), "--config", "tiny", "--max-steps", "1", "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "not prepared for training" in r.output
    r = CliRunner().invoke(app, ["evaluate", str(real_store), "--model", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "error" in r.output
