"""Launching multi-process training: torchrun as a subprocess of the flow / CLI.

``torchrun_command(store, run_dir, nproc, args)`` is exactly what a user types on a GPU box::

    torchrun --standalone --nproc-per-node=N -m models.train STORE.zarr --config full --out RUN_DIR

(``python -m torch.distributed.run`` is torchrun's module form, used so the venv's Python runs
it.) Each rank uses NCCL on CUDA, gloo on CPU; rendezvous is local (``--standalone``); for
several nodes replace it with torchrun's ``--nnodes/--rdzv-endpoint`` options.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def torchrun_command(store: str | Path, run_dir: str | Path, nproc: int, args: list[str] | None = None) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={int(nproc)}",
            "-m", "models.train", str(store), "--out", str(run_dir), "--no-progress", *(args or [])]


def train_args(config: str | dict = "tiny", *, run_dir: str | Path | None = None, mode: str | None = None,
               max_steps: int | None = None, batch_size: int | None = None, crop_size: int | None = None,
               overrides: list[str] | None = None, no_resume: bool = False,
               init_from: str | Path | None = None) -> list[str]:
    """``python -m models.train`` options (after STORE and --out) for these settings. ``config``: a
    preset name, or a ModelConfig dict, written to ``RUN_DIR/requested_config.json`` (atomically)
    and passed as ``--config-file``."""
    if isinstance(config, dict):
        if run_dir is None:
            raise ValueError("a ModelConfig dict needs run_dir (it is written there for the ranks to read)")
        from pipeline.atomic_io import atomic_write_json

        path = Path(run_dir) / "requested_config.json"
        atomic_write_json(path, config)
        args = ["--config-file", str(path)]
    else:
        args = ["--config", config]
    for flag, value in (("--mode", mode), ("--max-steps", max_steps), ("--batch-size", batch_size),
                        ("--crop-size", crop_size), ("--init-from", init_from)):
        if value is not None:
            args += [flag, str(value)]
    args += [a for o in (overrides or []) for a in ("--set", o)]
    return args + (["--no-resume"] if no_resume else [])


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
