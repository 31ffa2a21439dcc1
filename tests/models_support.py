"""Shared fixtures for the models tests (issue 4): a prepared real store and one short real run.

The store is the conftest's small real store (bundled Landsat patches) run through the
prepare engineer's ``pipeline.prepare.prepare_store`` (real edges, masks, pairings).
"""
from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest
import torch

from models.config import ModelConfig

# Fast CPU settings shared by the tests: tiny networks, 64 px crops, every step logged.
FAST = dict(batch_size=2, crop_size=64, log_every=1, checkpoint_every=2, sample_every=1000)


def tiny_cfg(**train) -> ModelConfig:
    cfg = ModelConfig.tiny(**{**FAST, **train})
    return cfg.model_copy(update={"schedule": cfg.schedule.model_copy(update={"mape_patches": 2, "mape_every": 1000})})


@contextlib.contextmanager
def torch_threads(n: int = 1):
    """CPU tests run beside other test processes on 2 cores: one intra-op thread is ~7x faster
    than two under that contention. Restores the previous setting."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.fixture
def single_thread():
    with torch_threads(1):
        yield


@pytest.fixture
def deterministic_torch():
    """Deterministic kernels where torch has them (warn where it has none), as
    ``TrainConfig.deterministic`` sets them in :func:`models.train.train`; the previous global
    setting is restored afterwards, so it does not leak into later tests."""
    old, old_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old, warn_only=old_warn)


@pytest.fixture(scope="session")
def prepared_store_template(real_store_template, tmp_path_factory) -> Path:
    from pipeline.prepare import prepare_store

    dst = tmp_path_factory.mktemp("prepared") / "real.zarr"
    shutil.copytree(real_store_template, dst)
    prepare_store(dst)
    return dst


@pytest.fixture
def prepared_store(prepared_store_template, tmp_path) -> Path:
    dst = tmp_path / "prepared.zarr"
    shutil.copytree(prepared_store_template, dst)
    return dst


@pytest.fixture(scope="session")
def trained_run(prepared_store_template, tmp_path_factory):
    """A tiny joint model trained 30 steps on real patches (128 px crops): (run_dir, summary)."""
    from models.train import train

    run_dir = tmp_path_factory.mktemp("runs") / "tiny-joint"
    cfg = tiny_cfg(mode="joint", max_steps=30, batch_size=4, crop_size=128, checkpoint_every=10, sample_every=30)
    with torch_threads(1):
        summary = train(prepared_store_template, run_dir, cfg, progress=False)
    return run_dir, summary
