"""Through the users' entry point (``python -m models.train`` / torchrun): exact resume after
SIGKILL, and a 2-process gloo DDP run writing the same checkpoint format."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from models.checkpoint import load_checkpoint, load_inference_bundle
from models.ddp import launch_torchrun
from models.reporting import read_history
from models.train import build_config, train

pytest_plugins = ["models_support"]  # fixtures registered once per session (not per importing module)
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_thread")]
ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--config", "tiny", "--mode", "joint", "--batch-size", "2", "--crop-size", "64",
        "--set", "train.checkpoint_every=2", "--set", "train.log_every=1", "--set", "train.deterministic=true",
        "--set", "schedule.mape_patches=2", "--set", "schedule.mape_every=3", "--set", "schedule.mape_threshold=1e9"]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _cfg(max_steps: int):
    flags = ARGS[ARGS.index("--set"):]
    return build_config("tiny", mode="joint", batch_size=2, crop_size=64, max_steps=max_steps,
                        overrides=[flags[i + 1] for i in range(0, len(flags), 2)])


def test_exact_resume_after_sigkill(prepared_store, tmp_path):
    steps = 14
    reference = train(prepared_store, tmp_path / "ref", _cfg(steps), progress=False)
    assert reference.stage == 2 and reference.stage_switch_step == 3
    ref = {h["step"]: h for h in read_history(tmp_path / "ref")}

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "models.train", str(prepared_store), "--out", str(killed),
                             "--max-steps", "100000", "--no-progress", *ARGS], cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "step-4.pt").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "no checkpoint within 120 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = load_checkpoint(killed / "checkpoints" / "last.pt")["step"]
    assert 4 <= at_kill < steps

    resumed = train(prepared_store, killed, _cfg(steps), progress=False)
    assert resumed.steps == steps and resumed.stage == 2 and resumed.stage_switch_step == 3
    hist = {h["step"]: h for h in read_history(killed)}
    assert sorted(hist) == list(range(1, steps + 1))  # lines past the checkpoint were dropped, then rewritten
    for step in range(at_kill + 1, steps + 1):
        for key in ("d1", "g1", "d2", "g2", "hole_l1", "edge_mape"):
            assert hist[step][key] == pytest.approx(ref[step][key], rel=1e-5, abs=1e-7), (step, key)
        assert hist[step]["stage"] == ref[step]["stage"]


def test_two_process_torchrun_gloo(prepared_store, tmp_path):
    run = tmp_path / "ddp"
    proc = launch_torchrun(prepared_store, run, 2, ["--config", "tiny", "--mode", "joint", "--max-steps", "3",
                                                    "--batch-size", "2", "--crop-size", "64"],
                           threads_per_proc=1, timeout=240)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["world_size"] == 2 and summary["steps"] == 3 and summary["device"] == "cpu"
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["step"] == 3 and set(ckpt["models"]) == {"g1", "g2", "d1", "d2"}
    assert not any(k.startswith("module.") for k in ckpt["models"]["g1"])  # same format as 1 process
    assert set(ckpt["optimizers"]) == {"g1", "g2", "d1", "d2"} and "data_position" in ckpt
    per_rank = ckpt["rng_per_rank"]  # each rank resumes its own random stream (crops)
    assert len(per_rank) == 2 and not torch.equal(per_rank[0]["crop"], per_rank[1]["crop"])
    bundle = load_inference_bundle(run)
    assert bundle.model_config.train.mode == "joint"
    # 20 train pairings, 2 ranks x batch 2 -> 5 batches per epoch per rank: 3 steps stay in epoch 0
    assert ckpt["data_position"] == {"epoch": 0, "batch": 3}
