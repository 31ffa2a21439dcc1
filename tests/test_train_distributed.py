"""Through the users' entry points (``python -m models.train`` / torchrun): exact resume after
SIGKILL for one process and for a 2-process gloo DDP run whose training set is not divisible by
world x batch, and equal batches on every rank.

Where the kill lands does not depend on load: a ``sitecustomize`` hook (:data:`HOLD_HOOK`) holds
the training process right after it wrote the checkpoint of the chosen step (rank 0 holds, the
other rank waits at the barrier), and only then are they killed - always at that step."""
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
from models.data import batches_per_epoch, epoch_batches
from models.ddp import launch_torchrun, torchrun_command
from models.reporting import read_history
from models.train import build_config, train

pytest_plugins = ["models_support"]  # fixtures registered once per session (not per importing module)
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_thread")]
ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--config", "tiny", "--mode", "joint", "--batch-size", "2", "--crop-size", "64",
        "--set", "train.checkpoint_every=1", "--set", "train.log_every=1", "--set", "train.deterministic=true",
        "--set", "schedule.mape_patches=2", "--set", "schedule.mape_every=3", "--set", "schedule.mape_threshold=1e9"]
LOSSES = ("d1", "g1", "d2", "g2", "hole_l1", "edge_mape")


HOLD_ENV = "EDGEFILL_TEST_HOLD_AFTER_STEP"
HOLD_HOOK = f'''"""Test hook (tests/test_train_distributed.py): with ${HOLD_ENV}=N, a training process
writes RUN_DIR/held after its checkpoint of step N and then waits to be killed."""
import os

if os.environ.get("{HOLD_ENV}"):
    import time
    from pathlib import Path

    import models.checkpoint as _checkpoint

    _save, _at = _checkpoint.save_checkpoint, int(os.environ["{HOLD_ENV}"])

    def save_checkpoint(run_dir, payload, *, step, **kw):
        path = _save(run_dir, payload, step=step, **kw)
        if step >= _at:
            (Path(run_dir) / "held").write_text(str(step))
            while True:
                time.sleep(1)
        return path

    _checkpoint.save_checkpoint = save_checkpoint
'''


def _env(hook_dir: Path | None = None) -> dict:
    path = str(ROOT) if hook_dir is None else os.pathsep.join([str(hook_dir), str(ROOT)])
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def _cfg(max_steps: int):
    flags = ARGS[ARGS.index("--set"):]
    return build_config("tiny", mode="joint", batch_size=2, crop_size=64, max_steps=max_steps,
                        overrides=[flags[i + 1] for i in range(0, len(flags), 2)])


def _kill_after(cmd: list[str], run: Path, step: int, timeout: float = 600) -> int:
    """Start ``cmd`` held after its checkpoint of ``step`` (:data:`HOLD_HOOK`); once it holds,
    SIGKILL it and every process it started (torchrun's ranks live in sessions of their own);
    returns the step of ``last.pt`` left behind. ``timeout`` only ends a run that never gets there."""
    import psutil

    hook_dir = run.parent / f"{run.name}-hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(HOLD_HOOK)
    env = {**_env(hook_dir), HOLD_ENV: str(step)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while not (run / "held").exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, f"no checkpoint {step} within {timeout} s"
            time.sleep(0.05)
    finally:
        family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        for pid in family:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
        psutil.wait_procs([psutil.Process(p) for p in family[1:] if psutil.pid_exists(p)], timeout=10)
    (run / "held").unlink()
    return load_checkpoint(run / "checkpoints" / "last.pt")["step"]


def _assert_same_losses(run: Path, ref: dict, first: int, last: int) -> None:
    hist = {h["step"]: h for h in read_history(run)}
    assert sorted(hist) == list(range(1, last + 1))  # lines past the checkpoint were dropped, then rewritten
    for step in range(first, last + 1):
        for key in LOSSES:
            assert hist[step][key] == pytest.approx(ref[step][key], rel=1e-5, abs=1e-7), (step, key)
        assert hist[step]["stage"] == ref[step]["stage"]


def test_every_rank_trains_the_same_number_of_batches_and_an_epoch_visits_every_image():
    n, batch, world = 62, 8, 4
    per_rank = [epoch_batches(n, batch, 3, seed=0, rank=r, world=world) for r in range(world)]
    assert {len(b) for b in per_rank} == {batches_per_epoch(n, batch, world)} == {2}   # not 2, 2, 1, 1
    assert all(len(b) == batch for rank in per_rank for b in rank)
    keys = [k for rank in per_rank for b in rank for k in b]
    assert {k[2] for k in keys} == set(range(n))           # one epoch = one pass over the images
    assert len({k[1] for k in keys}) == len(keys)           # every slot once: no sample drawn twice
    assert epoch_batches(n, batch, 3, seed=0, rank=1, world=world) == per_rank[1]
    assert epoch_batches(n, batch, 4, seed=0, rank=1, world=world) != per_rank[1]


def test_exact_resume_after_sigkill(prepared_store, tmp_path):
    steps = 8
    reference = train(prepared_store, tmp_path / "ref", _cfg(steps), progress=False)
    assert reference.stage == 2 and reference.stage_switch_step == 3
    ref = {h["step"]: h for h in read_history(tmp_path / "ref")}
    killed = tmp_path / "killed"
    at_kill = _kill_after([sys.executable, "-m", "models.train", str(prepared_store), "--out", str(killed),
                           "--max-steps", "100000", "--no-progress", *ARGS], killed, 4)
    assert at_kill == 4
    resumed = train(prepared_store, killed, _cfg(steps), progress=False)
    assert resumed.steps == steps and resumed.stage == 2 and resumed.stage_switch_step == 3
    _assert_same_losses(killed, ref, at_kill + 1, steps)


def test_two_process_gloo_run_resumes_mid_epoch_after_sigkill(prepared_store, tmp_path):
    """5 train images, 2 ranks x batch 2: 2 batches per rank per epoch (padded), never 2 and 1."""
    steps = 7
    ref_run = tmp_path / "ddp-ref"
    proc = launch_torchrun(prepared_store, ref_run, 2, [*ARGS, "--max-steps", str(steps)], threads_per_proc=1,
                           timeout=240)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["world_size"] == 2 and summary["steps"] == steps and summary["epochs"] == 3
    ref = {h["step"]: h for h in read_history(ref_run)}
    ckpt = load_checkpoint(ref_run / "checkpoints" / "last.pt")
    assert not any(k.startswith("module.") for k in ckpt["models"]["g1"])  # same format as 1 process
    assert len(ckpt["rng_per_rank"]) == 2 and ckpt["data_position"] == {"epoch": 3, "batch": 1}
    assert load_inference_bundle(ref_run).model_config.train.mode == "joint"

    run = tmp_path / "ddp-killed"
    cmd = torchrun_command(prepared_store, run, 2, [*ARGS, "--max-steps", "100000"])
    at_kill = _kill_after(cmd, run, 3)
    assert at_kill == 3  # 2 batches per epoch: step 3 is mid-epoch
    assert load_checkpoint(run / "checkpoints" / "last.pt")["data_position"]["batch"] == 1
    launch_torchrun(prepared_store, run, 2, [*ARGS, "--max-steps", str(steps)], threads_per_proc=1, timeout=240)
    _assert_same_losses(run, ref, at_kill + 1, steps)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["stage_switch_step"] == ckpt["stage_switch_step"] == 3


def test_cli_nproc_launches_torchrun_from_the_run_config(prepared_store, tmp_path):
    """``edgefill train --nproc 2`` (models.ddp.launch_training): the ranks read RUN_DIR/train_config.json."""
    from typer.testing import CliRunner

    from flows.cli import app

    run = tmp_path / "cli-ddp"
    res = CliRunner().invoke(app, ["train", str(prepared_store), "--out", str(run), "--nproc", "2", "--max-steps", "2",
                                   *ARGS])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["world_size"] == 2 and json.loads(res.stdout)["steps"] == 2
    assert json.loads((run / "train_config.json").read_text())["nproc"] == 1
    assert load_inference_bundle(run).model_config.train.batch_size == 2
