"""Prefect flows train-model / retrain-model (real Prefect, real store, tmp registry) + CLI."""
from __future__ import annotations

import json

import pytest

from models.registry import current_model, load_index

pytest_plugins = ["models_support"]  # fixtures registered once per session (not per importing module)
pytestmark = pytest.mark.usefixtures("single_thread")
FAST = ["train.batch_size=2", "train.crop_size=64", "schedule.mape_patches=2"]


@pytest.mark.slow
def test_retrain_promotes_a_better_candidate_and_keeps_a_worse_one(prefect_harness, prepared_store, tmp_path,
                                                                  monkeypatch):
    """Both outcomes of the promotion, each forced by construction (real training, real evaluation):

    - the first model is trained in edge mode only, so its G2 never saw an image: an untrained G2
      fills holes with mid-grey (tanh(~0) -> 0.5), far above Landsat's DN/255 levels. Ten inpainting
      steps from it learn the image level, so the candidate is better by a wide margin -> promoted;
    - then one Adam step at lr 1.0 moves every weight of that (now current) model by ~1, against
      weights of ~0.02: the candidate is garbage, certainly worse -> the current model is kept,
      and the flow says why."""
    import models.registry as reg
    from flows.train import retrain_model_flow, train_model_flow
    from models.config import RetrainConfig, TrainRunConfig

    monkeypatch.setenv("EDGEFILL_REGISTRY", str(tmp_path / "registry"))
    monkeypatch.setattr(reg, "SHIPPED_DIR", tmp_path / "no-shipped-model")  # a user's first model
    run_dir = tmp_path / "runs" / "first"
    out = train_model_flow(TrainRunConfig(store=prepared_store, out=run_dir, model="tiny", mode="edge",
                                          max_steps=1, overrides=FAST), pairs_per_bin=1)
    assert out["promoted"] and current_model() == out["model"] == "tiny-v1"
    assert "no current model" in out["reason"]
    assert out["metrics"]["split"] == "validation" and out["metrics"]["test"]["split"] == "test"  # test: reported only
    assert (run_dir / "eval" / "validation" / "evaluation.md").exists() and (run_dir / "eval" / "test" / "evaluation.md").exists()
    assert json.loads((run_dir / "metrics.json").read_text())["evaluation"]["hole_psnr"] == out["metrics"]["hole_psnr"]

    better = retrain_model_flow(RetrainConfig(store=prepared_store, out_root=tmp_path / "runs", max_steps=10,
                                              overrides=[*FAST, "train.mode=inpaint", "train.lr_g=0.001"],
                                              pairs_per_bin=1))
    cand, cur = better["candidate_metrics"]["hole_psnr"], better["current_metrics"]["hole_psnr"]
    assert better["base"] == "tiny-v1" and better["candidate"] == "tiny-v2"
    assert cur == pytest.approx(out["metrics"]["hole_psnr"])  # the current model re-measured on the same pairs
    assert cand > cur + 3.0, (cand, cur)                    # the construction holds, by a wide margin
    assert better["promoted"] and current_model() == "tiny-v2"
    assert ": better (improvement +" in better["reason"] and "keeping" not in better["reason"]
    # the fine-tune started from the current model's weights, in the base's config
    meta = json.loads((tmp_path / "runs" / better["run_dir"].split("/")[-1] / "config.json").read_text())
    assert meta["model_config"]["base_channels"] == 16 and meta["model_config"]["train"]["max_steps"] == 10
    assert meta["model_config"]["train"]["mode"] == "inpaint"

    worse = retrain_model_flow(RetrainConfig(store=prepared_store, out_root=tmp_path / "runs", max_steps=1,
                                             overrides=[*FAST, "train.lr_g=1.0"], pairs_per_bin=1))
    cand2, cur2 = worse["candidate_metrics"]["hole_psnr"], worse["current_metrics"]["hole_psnr"]
    assert worse["base"] == "tiny-v2" and worse["candidate"] == "tiny-v3"
    assert cur2 == pytest.approx(cand) and cand2 < cur2 - 3.0, (cand2, cur2)
    assert not worse["promoted"] and current_model() == "tiny-v2"
    assert worse["reason"].startswith(f"tiny-v3 hole_psnr={cand2:.4f} vs current tiny-v2 hole_psnr={cur2:.4f}: "
                                      "not better")
    assert worse["reason"].endswith("; keeping tiny-v2")
    index = load_index()
    assert set(index["models"]) == {"tiny-v1", "tiny-v2", "tiny-v3"}  # the rejected candidate is registered
    assert [(h["from"], h["to"]) for h in index["history"]] == [(None, "tiny-v1"), ("tiny-v1", "tiny-v2")]

    from prefect.client.orchestration import get_client
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts()
    keys = {a.key for a in artifacts}
    assert {"train-model", "train-model-evaluation", "train-model-test", "retrain-model"} <= keys
    retrain_notes = [a.data for a in artifacts if a.key == "retrain-model"]
    assert any("**KEPT tiny-v2**" in md and "keeping tiny-v2" in md for md in retrain_notes)
    assert any("**PROMOTED**" in md and "tiny-v2" in md for md in retrain_notes)


def test_nightly_deployment_runs_at_the_documented_03_00_utc():
    """The README documents the nightly retraining at 03:00 UTC: the deployment must say exactly that
    (the literal cron and the zone, stated in the deployment rather than left to a default)."""
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
