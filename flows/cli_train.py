"""``edgefill train`` and ``edgefill evaluate`` (the same plain functions as the flows)."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(
        store: Path = typer.Argument(..., help="prepared store (STORE.zarr)"),
        config: str = typer.Option("tiny", "--config", help="preset: tiny (CPU tests), demo (tiny, joint, minutes on CPU), full (GPU)"),
        max_steps: Optional[int] = typer.Option(None, "--max-steps", min=0, help="generator steps to train to"),
        out: Path = typer.Option(..., "--out", help="run directory (resumed if it holds a checkpoint)"),
        mode: Optional[str] = typer.Option(None, "--mode", help="edge | inpaint | joint"),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1),
        crop_size: Optional[int] = typer.Option(None, "--crop-size", help="random square crop, px (multiple of 4)"),
        nproc: int = typer.Option(1, "--nproc", min=1, help="processes (GPUs) via torchrun"),
        overrides: List[str] = typer.Option([], "--set", help="SECTION.KEY=VALUE, e.g. schedule.mape_threshold=0.2"),
        no_resume: bool = typer.Option(False, "--no-resume", help="start fresh even if OUT has a checkpoint"),
    ) -> None:
        """Train G1/G2 (EdgeConnect) on STORE into OUT; prints a JSON summary."""
        from models.checkpoint import CheckpointError
        from models.trainer import TrainingDivergedError
        from pipeline.store import StoreError

        try:
            if nproc > 1:
                from models.ddp import launch_torchrun, train_args
                launch_torchrun(store, out, nproc, train_args(config, mode=mode, max_steps=max_steps,
                                                              batch_size=batch_size, crop_size=crop_size,
                                                              overrides=overrides, no_resume=no_resume))
                typer.echo((out / "metrics.json").read_text())
                return
            from models.train import build_config, train
            cfg = build_config(config, mode=mode, max_steps=max_steps, batch_size=batch_size, crop_size=crop_size,
                               overrides=overrides)
            summary = train(store, out, cfg, resume=not no_resume)
        except (StoreError, CheckpointError, TrainingDivergedError, ValueError, RuntimeError) as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from exc
        typer.echo(json.dumps({k: v for k, v in asdict(summary).items() if k != "samples"}, indent=2, default=str))

    @app.command("evaluate")
    def evaluate_cmd(
        store: Path = typer.Argument(..., help="prepared store whose fixed pairings are scored"),
        model: Optional[str] = typer.Option(None, "--model", help="run dir or registry name ('current'); omit for baselines only"),
        out: Optional[Path] = typer.Option(None, "--out", help="report folder (default: RUN_DIR/eval or ./eval)"),
        pairs_per_bin: Optional[int] = typer.Option(None, "--pairs-per-bin", min=1, help="first k pairs of every (kind, bin) cell"),
        baselines: bool = typer.Option(True, "--baselines/--no-baselines", help="also score Telea, Navier-Stokes, GDAL fill, harmonic prefill"),
        split: str = typer.Option("test", "--split", help="test (reported) or validation (what decisions read)"),
        device: str = typer.Option("cpu", "--device"),
    ) -> None:
        """Model vs Telea / Navier-Stokes / GDAL FillNodata / harmonic fill on fixed pairings, through the deployment path."""
        from models.baselines import BASELINES
        from models.checkpoint import CheckpointError
        from models.evaluate import evaluate, markdown_table, write_report
        from models.registry import resolve_model
        from pipeline.store import StoreError

        try:
            methods = (("model",) if model else ()) + (BASELINES if baselines else ())
            result = evaluate(store, model, methods=methods, pairs_per_bin=pairs_per_bin, split=split, device=device)
            folder = out or ((resolve_model(model) / "eval") if model else Path("eval"))
            files = write_report(result, folder)
        except (StoreError, CheckpointError, KeyError, ValueError) as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from exc
        typer.echo(markdown_table([r for r in result.rows if r["ratio_bin"] == "all"]))
        typer.echo(json.dumps(files))
