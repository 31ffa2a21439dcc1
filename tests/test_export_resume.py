"""Resume: SIGKILL a real export subprocess at defined points, rerun, compare with an
uninterrupted export (identical pixels and metadata, no duplicates, no gaps).

The kill points are states of the store, never clock times: the export runs with the
``EDGEFILL_EXPORT_HOLD`` hook, so every shard job from shard K on stops (until killed) after
fetching or right after writing its ``images`` shard; the test kills once exactly K shards are
marked done (and, for the torn case, shard K's images file is on disk)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline.export import EXPORT_ARRAYS, HOLD_ENV, export_landsat
from pipeline.export_config import ExportConfig

REPO = Path(__file__).resolve().parent.parent
CONFIG = dict(shard_patches=4, count=30)
VOLATILE_ATTRS = {"created", "export_failures"}


def _export_cmd(out: Path) -> list[str]:
    code = ("from pipeline.export import export_landsat; from pipeline.export_config import ExportConfig; "
            f"export_landsat(ExportConfig(out={str(out)!r}, shard_patches={CONFIG['shard_patches']}, "
            f"count={CONFIG['count']}))")
    return [sys.executable, "-c", code]


def _done_shards(out: Path) -> int:
    try:
        return int(zarr.open_group(str(out), mode="r")["export_done"][:].sum())
    except Exception:  # not created yet
        return -1


def _images_shard_written(out: Path, shard: int) -> bool:
    return (out / "images" / "c" / str(shard) / "0" / "0" / "0").is_file()


def kill_export(out: Path, hold_from: int, stage: str) -> int:
    """Run the export with shard jobs ``>= hold_from`` held at ``stage`` ("fetched": nothing of the
    shard written; "images": its images shard written, nothing else); SIGKILL it as soon as the
    store shows exactly ``hold_from`` shards done (and, for "images", shard ``hold_from``'s images)."""
    spec = str(hold_from) if stage == "fetched" else f"{hold_from}:images"
    env = {**os.environ, HOLD_ENV: spec, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(_export_cmd(out), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if _done_shards(out) == hold_from and (stage == "fetched" or _images_shard_written(out, hold_from)):
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"export ended before its kill point: {proc.stderr.read().decode()[-500:]}"
        assert time.monotonic() < deadline, "the export never reached its kill point"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(10)
    return _done_shards(out)


def content(out: Path) -> dict:
    g = zarr.open_group(str(out), mode="r")
    arrays = {name: g[name][:] for name in EXPORT_ARRAYS + ("export_done", "export_plan")}
    attrs = {k: v for k, v in g.attrs.items() if k not in VOLATILE_ATTRS}
    attrs["export_summary"] = attrs["export_summary"]["content"]
    return {"arrays": arrays, "attrs": attrs}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ref") / "landsat.zarr"
    export_landsat(ExportConfig(out=out, **CONFIG))
    return content(out)


@pytest.mark.slow
@pytest.mark.parametrize("hold_from, stage", [(0, "fetched"), (1, "fetched"), (2, "images"), (4, "images")])
def test_kill_and_resume_equals_uninterrupted(tmp_path, reference, hold_from, stage):
    out = tmp_path / "landsat.zarr"
    done = kill_export(out, hold_from, stage)
    assert done == hold_from  # killed with exactly the first K shards done, no later one
    g = zarr.open_group(str(out), mode="r")
    assert not g.attrs["export_summary"]["complete"]
    assert _images_shard_written(out, hold_from) == (stage == "images")  # the torn shard is really torn
    summary = export_landsat(ExportConfig(out=out, **CONFIG))
    assert summary.complete
    assert summary.shards_written_now == summary.shards_total - hold_from  # resumed, not redone
    got = content(out)
    assert got["attrs"] == reference["attrs"]
    for name, want in reference["arrays"].items():
        np.testing.assert_array_equal(got["arrays"][name], want, err_msg=name)
    keys = list(zip(got["arrays"]["scene_id"].tolist(), map(tuple, got["arrays"]["transform"].tolist())))
    assert len(set(keys)) == len(keys)  # no duplicates
    assert got["arrays"]["export_done"].all()  # no gaps
    assert list(tmp_path.glob(".landsat.zarr.*.tmp")) == []  # atomic_io temporaries


def test_resume_after_failures_and_a_torn_grow(tmp_path, reference):
    """Shards failing (source errors) + a kill between two arrays' resizes: the rerun still
    produces exactly the uninterrupted store."""
    from pipeline.export_config import ExportError
    from pipeline.sources.base import SourceError
    from pipeline.sources.local import LocalSceneSource

    class FlakySource(LocalSceneSource):
        calls = 0

        def fetch_many(self, requests):
            FlakySource.calls += 1
            if FlakySource.calls > 2:
                raise SourceError("simulated outage")
            return super().fetch_many(requests)

    cfg = ExportConfig(out=tmp_path / "landsat.zarr", **CONFIG)
    with pytest.raises(ExportError, match="simulated outage"):
        export_landsat(cfg, source=FlakySource(cfg))
    g = zarr.open_group(str(cfg.out), mode="r+")
    assert g["export_done"][:].sum() == 2
    n = g["images"].shape[0]
    g["images"].resize((n + 8, 3, 256, 256))  # as if killed inside grow_store after its first array
    export_landsat(cfg)
    got = content(cfg.out)
    assert got["attrs"]["export_summary"] == reference["attrs"]["export_summary"]
    for name, want in reference["arrays"].items():
        np.testing.assert_array_equal(got["arrays"][name], want, err_msg=name)
