"""Small prepare configs for tests (few masks, so a prepare run takes seconds), and a local Dask
cluster started as a user would start one."""
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline.masks import RATIO_BINS
from pipeline.masks.library import MaskKindSpec, MaskLibraryConfig
from pipeline.pairings import PairingConfig
from pipeline.prepare import PrepareConfig


def small_mask_config(seed: int = 0) -> MaskLibraryConfig:
    """Every kind, split 60 / 20 / 20 into train / validation / test (5 irregular masks per
    evaluation split: one per hole-ratio bin)."""
    return MaskLibraryConfig(seed=seed, kinds=[
        MaskKindSpec(kind="qd_imd", count=0, bins=None), MaskKindSpec(kind="irregular", count=25),
        MaskKindSpec(kind="slc_off", count=15, bins=list(RATIO_BINS[:3])),
        MaskKindSpec(kind="slc_off_real", count=10), MaskKindSpec(kind="cloud", count=10),
        MaskKindSpec(kind="nodata", count=10, bins=list(RATIO_BINS[:4]))])


def small_prepare_config(seed: int = 0) -> PrepareConfig:
    return PrepareConfig(masks=small_mask_config(seed), pairings=PairingConfig(seed=seed, eval_pairs_per_bin=2))


ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def dask_env() -> dict[str, str]:
    """Environment for Dask processes that import the project (workers may start their own processes)."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}


@contextlib.contextmanager
def local_dask_cluster(workdir: Path):
    """`dask scheduler` + one `dask worker` (2 threads) on 127.0.0.1; yields the scheduler address."""
    sched_file = workdir / "scheduler.json"
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(sched_file)],
                              cwd=workdir, env=dask_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        procs.append(subprocess.Popen([str(BIN / "dask"), "worker", address, "--nthreads", "2", "--no-nanny",
                                       "--no-dashboard", "--host", "127.0.0.1"],
                                      cwd=ROOT, env=dask_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        import distributed

        with distributed.Client(address, timeout="30s") as c:
            c.wait_for_workers(1, timeout=60)
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:  # a test's own cluster: 5 s to stop cleanly (a worker retiring from a stopped scheduler
                p.wait(timeout=5)  # waits ~20 s for it), then it is killed
            except subprocess.TimeoutExpired:  # a worker still retiring under load: never leak it
                p.kill()
                p.wait(timeout=20)
