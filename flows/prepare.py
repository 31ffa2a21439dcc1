"""Prefect flow ``prepare-dataset`` (thin: the work is in :mod:`pipeline.prepare`).

Three tasks, each a whole batch: ``compute-edges`` (one Dask job over every unfinished shard,
on a LocalCluster or on the scheduler at ``scheduler``), ``mask-library`` and ``pairings``.
Returns the store path and a small summary; a markdown artifact records it.
Deployment ``prepare-dataset/default`` prepares the demo store ``./demo_out/landsat.zarr``.
"""
from __future__ import annotations

import time
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from pipeline.prepare import (DaskConfig, PrepareConfig, build_prepare_config, compute_edges, ensure_mask_library,
                              record_prepare, summary_markdown, write_pairings)
from pipeline.store import open_store

DEFAULT_STORE = "./demo_out/landsat.zarr"


@task(name="compute-edges")
def edges_task(store: str, config: PrepareConfig, dask: DaskConfig) -> dict:
    return compute_edges(store, config.edges, dask)


@task(name="mask-library")
def masks_task(store: str, config: PrepareConfig) -> tuple[int, bool]:
    return ensure_mask_library(store, config.masks)


@task(name="pairings")
def pairings_task(store: str, config: PrepareConfig) -> tuple[int, int, int]:
    return write_pairings(store, config.pairings)


@flow(name="prepare-dataset", log_prints=True)
def prepare_dataset_flow(store: str = DEFAULT_STORE, scheduler: str | None = None, seed: int = 0,
                         n_workers: int = 1, threads_per_worker: int = 2,
                         config: dict[str, Any] | None = None) -> dict:
    """Add edges, the mask library and pairings to ``store`` (idempotent, resumable)."""
    t0 = time.perf_counter()
    cfg = build_prepare_config(seed, config)
    dask = DaskConfig(scheduler=scheduler, n_workers=n_workers, threads_per_worker=threads_per_worker)
    open_store(store, "r", require=("images", "valid", "split", "export_done"))  # fail fast, clearly
    edges = edges_task(store, cfg, dask)
    n_masks, rebuilt = masks_task(store, cfg)
    counts = pairings_task(store, cfg)
    summary = record_prepare(store, cfg, edges, n_masks, rebuilt, counts, t0)
    create_markdown_artifact(key="prepare-dataset", markdown=summary_markdown(summary))
    return summary.model_dump()


def deployments() -> list:
    return [prepare_dataset_flow.to_deployment(
        name="default", parameters={"store": DEFAULT_STORE},
        description="Edges (Dask), mask library and pairings for the demo store ./demo_out/landsat.zarr")]
