"""Shared fixtures. Environment first: Prefect must never phone home or share state between runs."""
from __future__ import annotations

import os
import tempfile

_PREFECT_HOME = tempfile.mkdtemp(prefix="edgefill-prefect-")
os.environ.setdefault("PREFECT_HOME", _PREFECT_HOME)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_UI_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from affine import Affine  # noqa: E402
import pytest  # noqa: E402

from pipeline.scenes import read_scene  # noqa: E402
from pipeline.store import Radiometry, create_store  # noqa: E402

# Real scenes tiled for the shared small store: (scene id, split).
# Landsat 7 chips of four path/rows + Landsat 5 to train on; other path/rows (and another
# country) for validation and test, as the shipped model's data are split.
FIXTURE_SCENES = (("LE07_P090R083_20000913_C07", "train"), ("LE07_P091R083_20001006_C13", "train"),
                  ("LE07_P093R085_20001004_C25", "train"), ("LE07_P093R086_20001005_C33", "train"),
                  ("LT05_040028_20060706", "train"),
                  ("LE07_P092R086_19991128_C19", "validation"), ("LE07_TAIZHOU_20000317", "validation"),
                  ("LE07_OLINDA_STARS", "test"), ("LE07_P034R032_20010924_C01", "test"))


def _tiles(scene, size=256):
    h, w = scene.valid.shape
    for r in range(0, h - size + 1, size):
        for c in range(0, w - size + 1, size):
            if scene.valid[r:r + size, c:c + size].all():
                yield r, c


def build_real_store(path: Path, max_per_scene: int = 4, shard_patches: int = 4) -> Path:
    """A small store of real 256x256 patches from bundled scenes, written directly (no export
    machinery), so stages after export can be tested in isolation."""
    rows = []
    for scene_id, split in FIXTURE_SCENES:
        scene = read_scene(scene_id)
        for r, c in list(_tiles(scene))[:max_per_scene]:
            t = scene.transform @ Affine.translation(c, r)
            rows.append((scene, split, scene.rgb[:, r:r + 256, c:c + 256], (t.a, t.b, t.c, t.d, t.e, t.f)))
    group = create_store(path, n_patches=len(rows), shard_patches=shard_patches, bands=["red", "green", "blue"],
                         radiometry=Radiometry(), source="test-fixture",
                         export_config={"fixture": [s for s, _ in FIXTURE_SCENES], "max_per_scene": max_per_scene})
    group["images"][:] = np.stack([r[2] for r in rows])
    group["transform"][:] = np.array([r[3] for r in rows])
    group["epsg"][:] = np.array([r[0].epsg for r in rows], dtype=np.int32)
    group["scene_id"][:] = np.array([r[0].entry.id for r in rows])
    group["acquired"][:] = np.array([r[0].entry.acquired for r in rows])
    group["sensor"][:] = np.array([r[0].entry.sensor for r in rows])
    group["split"][:] = np.array([r[1] for r in rows])
    group["valid"][:] = True
    group["export_done"][:] = 1
    return path


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server (SQLite, 127.0.0.1) for every in-process flow test of the session.

    Several harnesses in one process hang in teardown (their event/log workers outlive the
    server they were bound to), so there is exactly one, started on first use."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def real_store_template(tmp_path_factory) -> Path:
    return build_real_store(tmp_path_factory.mktemp("store") / "real.zarr")


@pytest.fixture
def real_store(real_store_template, tmp_path) -> Path:
    """A private copy of the small real store (tests may add arrays to it)."""
    import shutil

    dst = tmp_path / "real.zarr"
    shutil.copytree(real_store_template, dst)
    return dst
