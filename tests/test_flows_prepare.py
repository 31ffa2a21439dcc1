"""prepare-dataset through Prefect's Dask integration: one retried Prefect task per shard on
prefect-dask's DaskTaskRunner, on a LocalCluster and on an existing scheduler (separate processes)."""
from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import numpy as np
import pytest
from prepare_helpers import local_dask_cluster, small_prepare_config

from pipeline.edges import edges_for_batch
from pipeline.prepare import DaskConfig, PrepareDatasetConfig
from pipeline.store import Radiometry, open_store

pytestmark = pytest.mark.slow  # a Prefect test server and Dask clusters (own processes)


async def _task_runs(flow_run_ids):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        return await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(flow_run_ids))))


async def _subflow_runs(parent_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    async with get_client() as client:
        return await client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id])))


def _run_flow(store: Path, scheduler: str | None = None) -> tuple[dict, list]:
    from flows.prepare import prepare_dataset_flow

    state = prepare_dataset_flow(_config(store, scheduler), return_state=True)
    result = state.result()
    parent = state.state_details.flow_run_id
    subflows = asyncio.run(_subflow_runs(parent))
    runs = asyncio.run(_task_runs([parent, *(f.id for f in subflows)]))
    return result, [r for r in runs if r.name.startswith("edges-shard-")]


def _config(store: Path, scheduler: str | None = None, **dask) -> PrepareDatasetConfig:
    return PrepareDatasetConfig(store=store, seed=0, dask=DaskConfig(scheduler=scheduler, **dask),
                                **small_prepare_config().model_dump())


def _assert_edges(store: Path) -> None:
    g = open_store(store)
    np.testing.assert_array_equal(g["edges"][:], edges_for_batch(Radiometry().to_unit(g["images"][:])))
    assert g["edges_done"][:].all()


def test_flow_runs_one_retried_prefect_task_per_shard_on_a_local_cluster(prefect_harness, real_store):
    result, runs = _run_flow(real_store)
    n_shards = result["shards_total"]
    assert n_shards > 2 and result["shards_computed"] == n_shards
    assert sorted(r.name for r in runs) == sorted(f"edges-shard-{k}" for k in range(n_shards))
    assert all(r.state.is_completed() and r.empirical_policy.retries == 2 for r in runs)
    _assert_edges(real_store)
    json.dumps(result)  # a small summary, never arrays
    again, runs_again = _run_flow(real_store)  # resumable: finished shards are not redone
    assert again["shards_computed"] == 0 and again["shards_skipped"] == n_shards and runs_again == []


@pytest.fixture
def dask_scheduler(tmp_path):
    """A user's Dask cluster on 127.0.0.1, reached by address."""
    with local_dask_cluster(tmp_path) as address:
        yield address


def test_flow_on_an_existing_scheduler_by_address(prefect_harness, dask_scheduler, real_store):
    import distributed

    result, runs = _run_flow(real_store, scheduler=dask_scheduler)
    n_shards = result["shards_total"]
    assert result["shards_computed"] == n_shards and len(runs) == n_shards
    assert all(r.state.is_completed() for r in runs)
    _assert_edges(real_store)
    with distributed.Client(dask_scheduler) as c:
        executed = c.run(lambda dask_worker: dask_worker.state.executed_count)
        pids = c.run(os.getpid)
    assert sum(executed.values()) >= n_shards  # the shard tasks ran on that worker ...
    assert os.getpid() not in pids.values()  # ... a separate process


def test_unreachable_scheduler_fails_the_flow_clearly(prefect_harness, real_store):
    from flows.prepare import prepare_dataset_flow

    state = prepare_dataset_flow(_config(real_store, "tcp://127.0.0.1:1", connect_timeout_s=3), return_state=True)
    assert state.is_failed()
    with pytest.raises(OSError, match="127.0.0.1:1"):
        state.result()
    g = open_store(real_store)
    assert not g["edges_done"][:].any() and "pairings" not in g  # no shard ran, nothing after edges either
