"""prepare on a real Dask cluster (scheduler + worker as separate processes, by address) and
resume after SIGKILL."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from prepare_helpers import dask_env, local_dask_cluster, small_prepare_config

from pipeline.edges import edges_for_batch
from pipeline.prepare import DaskConfig, compute_edges, prepare_store
from pipeline.store import Radiometry, create_store, open_store

pytestmark = pytest.mark.slow  # Dask scheduler and workers, a prepare killed mid-run (own processes)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def dask_cluster(tmp_path):
    """A user's Dask cluster on 127.0.0.1, reached by address."""
    with local_dask_cluster(tmp_path) as address:
        yield address


def test_prepare_on_existing_scheduler_by_address(dask_cluster, real_store):
    summary = prepare_store(real_store, small_prepare_config(), DaskConfig(scheduler=dask_cluster))
    assert summary.shards_computed == summary.shards_total > 1
    g = open_store(real_store)
    np.testing.assert_array_equal(g["edges"][:], edges_for_batch(Radiometry().to_unit(g["images"][:])))
    import distributed

    with distributed.Client(dask_cluster) as c:
        executed = c.run(lambda dask_worker: dask_worker.state.executed_count)
        pids = c.run(os.getpid)
        workers = c.scheduler_info()["workers"]
    assert sum(executed.values()) >= summary.shards_total  # the shard tasks ran on that worker ...
    assert os.getpid() not in pids.values()  # ... a separate process
    assert all(w["host"] == "127.0.0.1" for w in workers.values()) and len(workers) == 1


def _many_shard_store(template: Path, path: Path, n: int = 240) -> np.ndarray:
    """A store of ``n`` real patches (the fixture's, repeated) in 1-patch shards."""
    src = open_store(template)["images"][:]
    images = src[np.arange(n) % len(src)]
    g = create_store(path, n_patches=n, shard_patches=1, bands=["r", "g", "b"], radiometry=Radiometry(),
                     source="test-fixture", export_config={"repeat": n})
    g["images"][:] = images
    g["valid"][:] = True
    g["split"][:] = np.where(np.arange(n) % 3, "train", "test")
    g["export_done"][:] = 1
    return images


def test_resume_after_sigkill(real_store_template, tmp_path):
    store = tmp_path / "kill.zarr"
    images = _many_shard_store(real_store_template, store)
    code = ("import sys; from pipeline.prepare import compute_edges, DaskConfig; "
            "compute_edges(sys.argv[1], dask=DaskConfig(threads_per_worker=1))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(store)], cwd=ROOT, env=dask_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done_path = store / "edges_done"
    deadline = time.monotonic() + 120
    killed_at = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if (done_path / "zarr.json").exists():
            try:
                done = open_store(store)["edges_done"][:]
            except Exception:  # metadata being written right now: look again
                done = np.zeros(1)
            if done.sum() >= 5:
                os.kill(proc.pid, signal.SIGKILL)
                killed_at = int(done.sum())
                break
        time.sleep(0.01)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "prepare finished before it could be killed"
    done_before = open_store(store)["edges_done"][:].astype(bool)
    assert killed_at <= done_before.sum() < len(done_before)
    summary = compute_edges(store, dask=DaskConfig(threads_per_worker=2))
    assert summary["shards_skipped"] == done_before.sum()
    assert summary["shards_computed"] == len(done_before) - done_before.sum()
    g = open_store(store)
    assert g["edges_done"][:].all()
    np.testing.assert_array_equal(g["edges"][:], edges_for_batch(Radiometry().to_unit(images)))
