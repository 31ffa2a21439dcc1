"""Prefect flow ``export-landsat`` (thin: the work is in :mod:`pipeline.export`).

One task per shard (``export-shard``, retried), scheduled by the same plain function the CLI
uses; the flow returns the store path and a small summary, and publishes a markdown artifact
(counts, skips, failures, quicklook mosaic PNG written beside the store).
The flow's one parameter is the stage's config, :class:`pipeline.export_config.ExportConfig`
(Prefect validates it and shows its fields in the UI); its defaults are the embedded demo's.
Deployment ``export-landsat/default`` = the embedded local demo into ``./demo_out/landsat.zarr``;
``-p config='{"source": "earthengine", "project": "P", "key": "KEY.json"}'`` switches the same
deployment to Earth Engine.
"""
from __future__ import annotations

from functools import lru_cache

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from pipeline.export import ShardResult, build_source, export_landsat, summary_markdown, write_shard
from pipeline.export_config import ExportConfig
from pipeline.sources.base import PatchRequest


@lru_cache(maxsize=4)
def _source_for(config_json: str):
    """One source per config per process (Earth Engine initializes once, its pool is shared)."""
    return build_source(ExportConfig.model_validate_json(config_json))


@task(name="export-shard", retries=2, retry_delay_seconds=[2, 10], task_run_name="export-shard-{shard}")
def export_shard_task(store: str, shard: int, candidates: list[PatchRequest], config_json: str) -> dict:
    """Fetch + write one whole shard; returns its small summary (never pixels)."""
    return write_shard(store, shard, candidates, _source_for(config_json)).model_dump()


@flow(name="export-landsat", log_prints=True)
def export_landsat_flow(config: ExportConfig = ExportConfig()) -> dict:
    """Export real Landsat patches into ``config.out`` (resumes an interrupted export of the same config)."""
    cfg_json = config.model_dump_json()

    def run_shard(k: int, candidates: list[PatchRequest]) -> ShardResult:
        return ShardResult(**export_shard_task(str(config.out), k, candidates, cfg_json))

    summary = export_landsat(config, source=_source_for(cfg_json), run_shard=run_shard)
    create_markdown_artifact(key="export-landsat", markdown=summary_markdown(summary),
                             description=f"export-landsat summary for {summary.store}")
    print(f"exported {summary.n_valid} valid patches into {summary.store} ({summary.shards_total} shards)")
    return summary.model_dump()


def deployments() -> list:
    return [export_landsat_flow.to_deployment(
        name="default",
        description="Embedded demo: bundled real Landsat scenes -> ./demo_out/landsat.zarr (the config's defaults). "
                    "For Earth Engine: -p config='{\"source\": \"earthengine\", \"project\": \"P\", "
                    "\"key\": \"KEY.json\"}' (or EDGEFILL_EE_KEY on the worker).")]
