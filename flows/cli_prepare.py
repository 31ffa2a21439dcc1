"""``edgefill prepare STORE.zarr`` (the same plain function as the ``prepare-dataset`` flow)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("prepare")
    def prepare(
        store: Path = typer.Argument(..., help="exported store (STORE.zarr) to add edges, masks and pairings to"),
        scheduler: Optional[str] = typer.Option(None, "--scheduler",
                                                help="address of a running Dask scheduler, e.g. tcp://10.0.0.5:8786 "
                                                     "(default: a LocalCluster on this machine)"),
        seed: int = typer.Option(0, "--seed", help="seeds the mask library and the pairings"),
        n_workers: int = typer.Option(1, "--workers", min=1, help="LocalCluster workers"),
        threads: int = typer.Option(2, "--threads", min=1, help="threads per LocalCluster worker"),
        config: Optional[Path] = typer.Option(None, "--config", help="JSON PrepareConfig overrides"),
    ) -> None:
        """Canny edges (Dask over shards), the mask library and train/test pairings, into STORE."""
        from pipeline.prepare import DaskConfig, build_prepare_config, prepare_store

        try:
            overrides = json.loads(config.read_text()) if config else None
            cfg = build_prepare_config(seed, overrides)
            summary = prepare_store(store, cfg, DaskConfig(scheduler=scheduler, n_workers=n_workers,
                                                           threads_per_worker=threads))
        except (ValueError, ConnectionError, OSError) as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from exc
        typer.echo(json.dumps(summary.model_dump(), indent=2))
