"""One real deployment run: local Prefect server (scripts/prefect_server.sh, SQLite, 127.0.0.1),
``python -m flows.serve`` in a subprocess, ``prefect deployment run export-landsat/default --watch``
with the output path overridden to tmp (``-p config=...``); plus the flow in-process under
prefect_test_harness."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from pipeline.store import open_store

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    env = {**os.environ, "PREFECT_PORT": str(_free_port()), "PREFECT_HOME": str(home), "PYTHON": PY}
    env.pop("PREFECT_API_URL", None)
    started = subprocess.run(["bash", "scripts/prefect_server.sh", "start"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=150)
    assert started.returncode == 0, started.stderr + started.stdout
    url = started.stdout.strip().splitlines()[-1].split("=", 1)[1]
    again = subprocess.run(["bash", "scripts/prefect_server.sh", "start"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=60)
    assert "already running" in again.stdout  # idempotent
    yield {**env, "PREFECT_API_URL": url}
    subprocess.run(["bash", "scripts/prefect_server.sh", "stop"], cwd=REPO, env=env, timeout=60)


@pytest.mark.slow
def test_deployment_run_through_local_prefect_server(prefect_server, tmp_path):
    env = {**prefect_server, "PYTHONPATH": str(REPO)}
    serve_log = tmp_path / "serve.log"
    with open(serve_log, "w") as log:
        serve = subprocess.Popen([PY, "-m", "flows.serve", "flows.export"], cwd=tmp_path, env=env,
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        waited = subprocess.run([PY, "-m", "flows.cli", "wait-for-deployments", "export-landsat/default",
                                 "--timeout", "120"],
                                cwd=REPO, env=env, capture_output=True, text=True, timeout=150)
        assert waited.returncode == 0, waited.stderr + serve_log.read_text()[-2000:]
        out = tmp_path / "deployed.zarr"
        run = subprocess.run([PY, "-m", "prefect", "deployment", "run", "export-landsat/default",
                              "-p", f'config={{"out": "{out}", "shard_patches": 8}}', "--watch"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:] + serve_log.read_text()[-2000:]
        assert "Completed" in run.stdout + run.stderr
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(30)
    g = open_store(out)
    assert g.attrs["export_summary"]["complete"] and g["valid"][:].sum() > 30
    assert g["export_done"][:].all() and (out.parent / "deployed_quicklook.png").is_file()
    artifacts = asyncio.run(_artifacts(prefect_server["PREFECT_API_URL"]))
    md = [a.data for a in artifacts if a.key == "export-landsat"]
    assert md and str(out) in md[0] and "valid patches" in md[0] and "deployed_quicklook.png" in md[0]


async def _artifacts(url: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: url}):
        async with get_client() as client:
            return await client.read_artifacts()


@pytest.mark.slow
def test_flow_in_process_tasks_per_shard(prefect_harness, tmp_path):
    """The flow called in-process (session test server): one retried task run per shard."""
    from flows.export import export_landsat_flow
    from pipeline.export_config import ExportConfig

    state = export_landsat_flow(ExportConfig(out=tmp_path / "f.zarr", shard_patches=16), return_state=True)
    result = state.result()
    runs = asyncio.run(_task_runs(state.state_details.flow_run_id))
    n_shards = result["shards_total"]
    assert result["complete"] and n_shards == -(-result["n_patches"] // 16) > 2 and result["n_valid"] > 30
    assert isinstance(result["store"], str)  # paths and small summaries, never arrays
    assert sorted(r.name for r in runs) == sorted(f"export-shard-{k}" for k in range(n_shards))
    assert all(r.state.is_completed() for r in runs)


async def _task_runs(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        return await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def test_serve_collects_existing_modules_and_warns_on_missing():
    from flows.serve import collect_deployments
    from pipeline.export_config import ExportConfig

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        deps = collect_deployments(("flows.export", "flows.not_built_yet"))
    assert [d.name for d in deps] == ["default"]
    assert ExportConfig.model_validate(deps[0].parameters.get("config", {})).out == Path("./demo_out/landsat.zarr")
    assert any("flows.not_built_yet" in str(w.message) for w in caught)
