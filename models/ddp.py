"""Launching multi-process training: torchrun as a subprocess of the CLI / flow - the one place.

``torchrun_command(store, run_dir, nproc, args)`` is exactly what a user types on a GPU box::

    torchrun --standalone --nproc-per-node=N -m models.train STORE.zarr --config full --out RUN_DIR

(``python -m torch.distributed.run`` is torchrun's module form, used so the venv's Python runs
it; ``python -m models.train`` is ``edgefill train``.) :func:`launch_training` runs a
:class:`~models.config.TrainRunConfig` with ``nproc`` > 1 this way: the config is written to
``RUN_DIR/train_config.json`` and every rank reads it (``--config``), so nothing is restated as
flags. Each rank uses NCCL on CUDA, gloo on CPU; rendezvous is local (``--standalone``); for
several nodes replace it with torchrun's ``--nnodes/--rdzv-endpoint`` options.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from models.config import TrainRunConfig

#: the run config every rank reads, written into the run directory by :func:`launch_training`
RANK_CONFIG = "train_config.json"


def torchrun_command(store: str | Path, run_dir: str | Path, nproc: int, args: list[str] | None = None) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={int(nproc)}",
            "-m", "models.train", str(store), "--out", str(run_dir), "--no-progress", *(args or [])]


def launch_torchrun(store: str | Path, run_dir: str | Path, nproc: int, args: list[str] | None = None,
                    *, threads_per_proc: int | None = None, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run torchrun to completion; raise ``RuntimeError`` with the tail of its output on failure."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if threads_per_proc:
        env["OMP_NUM_THREADS"] = str(threads_per_proc)
    proc = subprocess.run(torchrun_command(store, run_dir, nproc, args), env=env, cwd=root, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise RuntimeError(f"torchrun ({nproc} processes) failed with exit code {proc.returncode}:\n{tail}")
    return proc


def launch_training(cfg: "TrainRunConfig", *, threads_per_proc: int | None = None,
                    timeout: float | None = None) -> subprocess.CompletedProcess:
    """Train ``cfg`` on ``cfg.nproc`` ranks: write it (as one rank's config: ``nproc`` 1, no progress
    bar) to ``RUN_DIR/train_config.json`` atomically, then torchrun ``python -m models.train
    --config`` that file."""
    from pipeline.atomic_io import atomic_write_text

    # the ranks run in the repository root: paths relative to the caller become absolute
    store, out = Path(cfg.store).resolve(), Path(cfg.out).resolve()
    model = str(Path(cfg.model).resolve()) if isinstance(cfg.model, str) and Path(cfg.model).is_file() else cfg.model
    rank_cfg = cfg.model_copy(update={"store": store, "out": out, "model": model, "nproc": 1, "progress": False})
    path = out / RANK_CONFIG
    atomic_write_text(path, rank_cfg.model_dump_json(indent=2))
    return launch_torchrun(store, out, cfg.nproc, ["--config", str(path)], threads_per_proc=threads_per_proc,
                           timeout=timeout)
