"""Prefect flow ``prepare-dataset`` (thin: the work is in :mod:`pipeline.prepare`).

Edges run through Prefect's Dask integration: the subflow ``compute-edges`` maps one task
``edges-shard-{k}`` (retried) over every exported shard whose edges are not done, on prefect-dask's
``DaskTaskRunner`` - a LocalCluster by default (``n_workers`` x ``threads_per_worker``), the
existing scheduler at ``scheduler`` (``tcp://host:port``) otherwise, whose workers must import this
project and see the store path. Prefect sees, retries and records each shard task. Then the tasks
``mask-library`` and ``pairings`` (whole-store, cheap). Returns the store path and a small summary;
a markdown artifact records it. The flow's one parameter is the stage's config,
:class:`pipeline.prepare.PrepareDatasetConfig` (store, seed, edge/mask/pairing settings, Dask).
Deployment ``prepare-dataset/default`` prepares the demo store ``./demo_out/landsat.zarr`` (the
config's default); ``-p config='{"store": "S.zarr", "dask": {"scheduler": "tcp://HOST:8786"}}'``.
"""
from __future__ import annotations

import time
from typing import Any

from prefect import flow, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect_dask import DaskTaskRunner

from pipeline.edges import EdgeParams
from pipeline.prepare import (DaskConfig, PrepareConfig, PrepareDatasetConfig, edges_shard, ensure_mask_library,
                              finish_edges, plan_edges, record_prepare, summary_markdown, write_pairings)
from pipeline.store import open_store

def dask_task_runner(cfg: DaskConfig) -> DaskTaskRunner:
    """prefect-dask runner on the scheduler at ``cfg.scheduler``, else on a fresh LocalCluster."""
    if cfg.scheduler:
        return DaskTaskRunner(address=cfg.scheduler, client_kwargs={"timeout": f"{cfg.connect_timeout_s}s"})
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs={"n_workers": cfg.n_workers, "threads_per_worker": cfg.threads_per_worker,
                                          "processes": cfg.processes, "dashboard_address": None})


@task(name="edges-shard", retries=2, retry_delay_seconds=[2, 10], task_run_name="edges-shard-{shard}",
      cache_policy=NO_CACHE)
def edges_shard_task(shard: int, store: str, radiometry: dict, params: dict, run_id: str) -> list[int]:
    """Edges of one store shard, written and marked done; returns [edge pixels, pixels] (never arrays)."""
    return edges_shard(shard, store, radiometry, params, run_id).tolist()


@flow(name="compute-edges")
def compute_edges_flow(store: str, params: dict[str, Any]) -> dict:
    """One ``edges-shard-{k}`` task per exported shard whose edges are not done (runs on the task
    runner the caller sets: :func:`dask_task_runner`)."""
    plan = plan_edges(store, EdgeParams(**params))
    futures = edges_shard_task.map(plan.todo, store=unmapped(plan.store), radiometry=unmapped(plan.radiometry),
                                   params=unmapped(plan.params), run_id=unmapped(plan.run_id))
    return finish_edges(plan, futures.result())


@task(name="mask-library")
def masks_task(store: str, config: PrepareConfig) -> tuple[int, bool]:
    return ensure_mask_library(store, config.masks)


@task(name="pairings")
def pairings_task(store: str, config: PrepareConfig) -> tuple[int, int, int]:
    return write_pairings(store, config.pairings)


@flow(name="prepare-dataset", log_prints=True)
def prepare_dataset_flow(config: PrepareDatasetConfig = PrepareDatasetConfig()) -> dict:
    """Add edges, the mask library and pairings to ``config.store`` (idempotent, resumable)."""
    t0 = time.perf_counter()
    store, cfg = str(config.store), config.prepare_config()
    open_store(store, "r", require=("images", "valid", "split", "export_done"))  # fail fast, clearly
    edges = compute_edges_flow.with_options(task_runner=dask_task_runner(config.dask))(store, cfg.edges.model_dump())
    n_masks, rebuilt = masks_task(store, cfg)
    counts = pairings_task(store, cfg)
    summary = record_prepare(store, cfg, edges, n_masks, rebuilt, counts, t0)
    create_markdown_artifact(key="prepare-dataset", markdown=summary_markdown(summary))
    return summary.model_dump()


def deployments() -> list:
    return [prepare_dataset_flow.to_deployment(
        name="default",
        description="Edges (one Prefect task per shard on a Dask cluster), mask library and pairings for the "
                    "demo store ./demo_out/landsat.zarr (the config's default)")]
