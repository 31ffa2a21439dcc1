"""Resume: SIGKILL a real export subprocess at several points, rerun, compare with an
uninterrupted export (identical pixels and metadata, no duplicates, no gaps)."""
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

from pipeline.export import EXPORT_ARRAYS, SHARD_DELAY_ENV, export_landsat
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


def kill_export(out: Path, after_shards: int | None, after_s: float = 0.0) -> int:
    """Start the export slowed per shard; SIGKILL it ``after_s`` seconds after ``after_shards``
    shards are done (``after_shards`` None: ``after_s`` after the start)."""
    env = {**os.environ, SHARD_DELAY_ENV: "0.4", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(_export_cmd(out), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.monotonic()
    try:
        while proc.poll() is None and time.monotonic() - t0 < 60:
            if after_shards is None and time.monotonic() - t0 >= after_s:
                break
            if after_shards is not None and _done_shards(out) >= after_shards:
                time.sleep(after_s)  # land anywhere inside the following shards' fetch/write
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"export finished before the kill point: {proc.stderr.read().decode()[-500:]}"
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
@pytest.mark.parametrize("after_shards, after_s", [(None, 1.5), (1, 0.0), (2, 0.23), (4, 0.41)])
def test_kill_and_resume_equals_uninterrupted(tmp_path, reference, after_shards, after_s):
    out = tmp_path / "landsat.zarr"
    done = kill_export(out, after_shards, after_s)
    if after_shards is not None:
        assert done >= after_shards  # it really was interrupted mid-export
        g = zarr.open_group(str(out), mode="r")
        assert not g.attrs["export_summary"]["complete"]
    summary = export_landsat(ExportConfig(out=out, **CONFIG))
    assert summary.complete
    if after_shards is not None:
        assert summary.shards_written_now < summary.shards_total  # resumed, not redone
    got = content(out)
    assert got["attrs"] == reference["attrs"]
    for name, want in reference["arrays"].items():
        np.testing.assert_array_equal(got["arrays"][name], want, err_msg=name)
    keys = list(zip(got["arrays"]["scene_id"].tolist(), map(tuple, got["arrays"]["transform"].tolist())))
    assert len(set(keys)) == len(keys)  # no duplicates
    assert got["arrays"]["export_done"].all()  # no gaps
    assert list(tmp_path.glob(".landsat.zarr.tmp-*")) == []


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
