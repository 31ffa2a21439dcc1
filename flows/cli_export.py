"""``edgefill export`` (the same plain function as the ``export-landsat`` flow), rich progress."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export(
        out: Path = typer.Option(Path("demo_out/landsat.zarr"), "--out", help="store to create or resume (STORE.zarr)"),
        source: str = typer.Option("local", "--source", help="local (bundled real scenes) or earthengine"),
        count: Optional[int] = typer.Option(None, "--count", help="target valid patches (default: all local / 60000 EE)"),
        seed: int = typer.Option(0, "--seed"),
        shard_patches: int = typer.Option(16, "--shard-patches", help="patches per Zarr shard (and per task)"),
        project: Optional[str] = typer.Option(None, "--project", help="Earth Engine Cloud project"),
        key: Optional[Path] = typer.Option(None, "--key", help="service-account JSON key (else $EDGEFILL_EE_KEY / "
                                                               "$GOOGLE_APPLICATION_CREDENTIALS)"),
        aoi: Optional[List[Path]] = typer.Option(None, "--aoi", help="GeoJSON AOI file (repeatable; default: data_catalog/aois)"),
        start: Optional[str] = typer.Option(None, "--start", help="date window start (YYYY-MM-DD)"),
        end: Optional[str] = typer.Option(None, "--end", help="date window end, exclusive (default 2003-05-30: SLC-on)"),
        product: Optional[str] = typer.Option(None, "--product", help="toa (default) or sr"),
        high_volume: bool = typer.Option(False, "--high-volume", help="use the Earth Engine high-volume endpoint"),
        api_url: Optional[str] = typer.Option(None, "--api-url", help="Earth Engine endpoint override"),
        concurrency: Optional[int] = typer.Option(None, "--concurrency", help="concurrent requests (<= 40)"),
        dataset: Optional[str] = typer.Option(None, "--dataset", help="data_catalog/datasets/<name>.json (local)"),
        stride: Optional[int] = typer.Option(None, "--stride", help="local: px between patch starts (default 256)"),
        include_holdout: bool = typer.Option(False, "--include-holdout", help="local: also export holdout scenes (Everest) into test"),
    ) -> None:
        """Export real Landsat 256x256 patches into a sharded Zarr store (resumable)."""
        from pydantic import ValidationError
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from pipeline.export import export_landsat
        from pipeline.export_config import build_export_config
        from pipeline.sources.base import SourceError

        try:
            cfg = build_export_config(source, str(out), count, seed, project, str(key) if key else None,
                                      [str(a) for a in aoi] if aoi else None, None, shard_patches=shard_patches,
                                      start=start, end=end, product=product, high_volume=high_volume or None,
                                      api_url=api_url, concurrency=concurrency, dataset=dataset, stride=stride,
                                      include_holdout=include_holdout or None)
            with Progress(TextColumn("export"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                          TimeElapsedColumn()) as bar:
                task = bar.add_task("planning", total=None)

                def progress(done: int, total: int, n_valid: int) -> None:
                    bar.update(task, completed=done, total=total, description=f"shards, {n_valid} valid patches")

                summary = export_landsat(cfg, progress=progress)
        except (ValidationError, ValueError, SourceError, OSError) as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from exc
        typer.echo(json.dumps(summary.model_dump(), indent=2))
