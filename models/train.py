"""Training - the same code on a laptop CPU, one GPU or several (torchrun / DDP).

    edgefill train STORE.zarr --config tiny --max-steps 200 --out runs/tiny
    python -m models.train STORE.zarr --config tiny --max-steps 200 --out runs/tiny    # the same command
    torchrun --standalone --nproc-per-node=4 -m models.train STORE.zarr --config full --out runs/full

``python -m models.train`` is ``edgefill train`` (one parser, :mod:`flows.cli`), so torchrun can
start it as each rank's module. :func:`run_training` is the stage's plain function over its one
config (:class:`models.config.TrainRunConfig`); :func:`train` the loop.

Under torchrun (``WORLD_SIZE`` > 1) each rank trains on its share of every batch list
(:mod:`models.data`), gradients are averaged by DDP (NCCL on CUDA, gloo on CPU) and only rank 0
writes checkpoints, logs and samples. A run dir that already holds ``checkpoints/last.pt`` is
resumed exactly (models, optimisers, G1 loss stage, step, RNG, data position) unless
``resume=False``. A NaN/inf loss raises :class:`TrainingDivergedError`; the last good
checkpoint is left in place.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from models.checkpoint import (CheckpointError, load_checkpoint, read_run_config, save_best, save_checkpoint,
                               write_run_config)
from models.config import ModelConfig, TrainRunConfig, apply_overrides, build_config  # noqa: F401 (re-exported)
from models.data import batch_iterator, collate, epoch_batches
from models.device import require_device
from models.evaluate import ModelFill, score_pairs, validation_scores
from models.networks import edge_connect_forward
from models.reporting import RunLog, save_loss_plot, save_sample_grid
from models.trainer import Trainer, TrainingDivergedError
from pipeline.atomic_io import atomic_write_json
from pipeline.dataset import PREPARED_ARRAYS, EvalPairs, TrainingSamples
from pipeline.pairings import EVAL_SPLITS
from pipeline.store import StoreError, open_store, read_meta

log = logging.getLogger("edgefill.train")


@dataclass
class TrainSummary:
    """What a training run reports (small: paths and numbers)."""

    run_dir: str
    status: str
    steps: int
    epochs: int
    stage: int
    stage_switch_step: int | None
    held_out_start: dict[str, float]
    held_out_end: dict[str, float]
    last_losses: dict[str, float]
    images_per_s: float
    seconds: float
    world_size: int
    device: str
    data_version: str
    train_seconds: float = 0.0  # wall time of the whole run to ``steps`` (every session; ``seconds``: this one)
    machine: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)


def machine_facts(device: torch.device, world: int) -> dict[str, Any]:
    """What the run trained on, for its records (no host name): CPU, cores, torch threads, device."""
    import platform

    facts: dict[str, Any] = {"cpu": platform.machine(), "cpu_cores": os.cpu_count(),
                             "torch_threads": torch.get_num_threads(), "device": device.type, "processes": world,
                             "torch": torch.__version__}
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    return facts


def open_prepared_store(store: Path):
    """Open a store that ``prepare`` has completed; a clear :class:`StoreError` otherwise."""
    group = open_store(store, "r", require=("images",))
    missing = [a for a in PREPARED_ARRAYS if a not in group]
    missing += [f"pairings/{s}" for s in EVAL_SPLITS if f"pairings/{s}" not in group]
    if missing:
        raise StoreError(f"store {store} is not prepared for training: it lacks {missing} "
                         f"(run `edgefill prepare {store}` first)")
    return group


def _dist_setup(device: str | None) -> tuple[int, int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    dev = require_device(device)
    if dev.type == "cuda" and dev.index is None:  # plain "cuda": this rank's GPU
        dev = torch.device("cuda", local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return world, rank, local, dev


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def validation_subset(ds: EvalPairs, n: int) -> list[int]:
    """``n`` rows spread evenly over the validation table (every mask kind and bin in turn)."""
    if len(ds) == 0:
        raise StoreError(f"store {ds.store_path} has no validation pairs: training needs a validation split "
                         f"(scenes or AOIs with split 'validation')")
    return sorted({int(i) for i in np.linspace(0, len(ds) - 1, min(n, len(ds))).round()})


def validation_metrics(trainer: Trainer, ds: EvalPairs, keep: list[int], patch_size: int) -> dict[str, float]:
    """The generators' scores (their averaged weights when ``ema_decay`` > 0) on validation rows
    ``keep`` through the deployment path (:class:`models.evaluate.ModelFill`): hole PSNR / L1 /
    SSIM and the tolerant edge MAPE."""
    g1, g2 = trainer.averaged_generators()
    fill = ModelFill(g1, g2, ds.radiometry, ds.edge_params, patch_size, device=str(trainer.device))
    return validation_scores(score_pairs(ds, keep, fill, ("model",)))


def train(store: str | Path, run_dir: str | Path, cfg: ModelConfig, *, resume: bool = True,
          init_from: str | Path | None = None, device: str | None = None, progress: bool = True) -> TrainSummary:
    """Train ``cfg.train.mode`` on a prepared store into ``run_dir`` (see module docstring).

    ``init_from``: a run dir whose weights (and G1 stage) start this run (fine-tuning)."""
    store, run_dir = Path(store), Path(run_dir)
    t = cfg.train
    if device is not None:
        require_device(device)  # before anything is read or written
    group = open_prepared_store(store)
    meta = read_meta(group)
    radiometry, edge_params = meta.radiometry, meta.prepare.edges()
    data_version, patch_size = meta.config_hash, meta.patch_size
    world, rank, local, dev = _dist_setup(device)
    if t.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = dev.type == "cuda"
    torch.manual_seed(t.seed)
    trainer = Trainer(cfg, dev, ddp=world > 1, local_rank=local)
    torch.manual_seed(t.seed + rank)

    last = run_dir / "checkpoints" / "last.pt"
    held_out_start: dict[str, float] | None = None
    if (run_dir / "config.json").exists():
        old = read_run_config(run_dir)
        if old.get("architecture_hash") != cfg.architecture_hash():
            raise CheckpointError(f"{run_dir} holds a run of another architecture ({old['architecture']}); "
                                  f"use a new --out directory")
    if resume and last.exists():
        ckpt = load_checkpoint(last, architecture_hash=cfg.architecture_hash(), map_location="cpu")
        trainer.restore(ckpt, rank=rank, world=world)
        held_out_start = ckpt.get("held_out_start")
        if rank == 0:
            log.warning("resuming %s at step %d (epoch %d, batch %d, stage %d)", run_dir, trainer.state.step,
                        trainer.state.epoch, trainer.state.batch, trainer.state.stage)
    elif init_from is not None:
        from models.registry import resolve_model
        src = resolve_model(init_from)
        trainer.restore(load_checkpoint(src / "checkpoints" / "last.pt", architecture_hash=cfg.architecture_hash(),
                                        map_location="cpu"), weights_only=True)
    if rank == 0:
        write_run_config(run_dir, cfg, radiometry=radiometry, edge_params=edge_params, patch_size=patch_size,
                         data_version=data_version, store=str(store.resolve()), warnings=trainer.warnings)
    _barrier(world)

    train_ds = TrainingSamples(store, crop_size=t.crop_size, seed=t.seed)
    val_ds = EvalPairs(store, "validation")
    val_keep = validation_subset(val_ds, cfg.schedule.mape_patches)
    if held_out_start is None:
        held_out_start = validation_metrics(trainer, val_ds, val_keep, patch_size)
    runlog = RunLog(run_dir, trainer.state.step) if rank == 0 else None
    st = trainer.state
    last_losses: dict[str, float] = {}
    samples: list[str] = []
    status = "completed"
    start_step, t0, seconds0 = st.step, time.perf_counter(), st.seconds
    sample_items = [val_ds[i] for i in val_keep[:4]]

    def checkpoint() -> None:
        rng = [trainer.rng_state()]
        if world > 1:  # every rank's RNG, so each resumes its own stream exactly
            rng = [None] * world
            dist.all_gather_object(rng, trainer.rng_state())
        if rank == 0:
            save_checkpoint(run_dir, {**trainer.checkpoint_payload(rng), "held_out_start": held_out_start},
                            step=st.step)
        _barrier(world)

    def sample() -> None:
        if rank != 0:
            return
        b = collate(sample_items)
        with torch.no_grad():
            image, known, mask = (b[k].to(dev) for k in ("image", "known_edges", "mask"))
            g1, g2 = trainer.averaged_generators()
            out, gen = edge_connect_forward(g1.eval(), g2.eval(), image, known, mask)
        samples.append(str(save_sample_grid(run_dir / "samples" / f"step-{st.step}.png", image, b["edges"].to(dev),
                                            mask, gen, out)))

    bar = None
    if rank == 0 and progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        bar = Progress(TextColumn("[bold]train {task.fields[mode]}"), BarColumn(), MofNCompleteColumn(),
                       TimeRemainingColumn(), TextColumn("{task.fields[info]}"), transient=False)
        task = bar.add_task("train", total=t.max_steps, completed=st.step, mode=t.mode, info="")
        bar.start()
    validation: dict[str, float] = {}
    try:
        while st.step < t.max_steps:
            batches = epoch_batches(len(train_ds), t.batch_size, st.epoch, t.seed, rank, world)
            for batch in batch_iterator(train_ds, batches, st.batch, num_workers=t.num_workers,
                                        pin_memory=dev.type == "cuda"):
                last_losses = trainer.train_step(batch)
                st.seconds = seconds0 + time.perf_counter() - t0
                st.batch += 1
                if st.batch >= len(batches):
                    st.epoch, st.batch = st.epoch + 1, 0
                    if t.mode != "inpaint":
                        trainer.maybe_switch_stage(None)
                if st.step % cfg.schedule.mape_every == 0:
                    validation = validation_metrics(trainer, val_ds, val_keep, patch_size) if rank == 0 else {}
                    if t.mode != "inpaint":
                        trainer.maybe_switch_stage(validation.get("edge_mape"))
                    if rank == 0 and t.keep_best and validation["hole_psnr"] > (st.best_value or float("-inf")):
                        st.best_step, st.best_value = st.step, validation["hole_psnr"]
                        payload = trainer.checkpoint_payload()
                        payload["models"] = {**payload["models"], **payload.get("ema", {})}  # the averaged G1/G2
                        save_best(run_dir, payload, step=st.step)
                if runlog is not None and st.step % t.log_every == 0:
                    logged = {**last_losses, **{f"val_{k}": v for k, v in validation.items()}}
                    runlog.log(st.step, logged, stage=st.stage, epoch=st.epoch, seconds=round(st.seconds, 2))
                    validation = {}
                if bar is not None:
                    bar.update(task, completed=st.step, info=" ".join(f"{k}={v:.3f}" for k, v in list(last_losses.items())[:4]))
                if st.step % t.sample_every == 0:
                    sample()
                if st.step % t.checkpoint_every == 0 or st.step >= t.max_steps:
                    checkpoint()
                if st.step >= t.max_steps:
                    break
    except TrainingDivergedError as exc:
        status = f"diverged: {exc}"
        if rank == 0:
            atomic_write_json(run_dir / "metrics.json", {"status": status, "steps": st.step})
        raise
    finally:
        if bar is not None:
            bar.stop()
        if runlog is not None:
            runlog.close()
    seconds = time.perf_counter() - t0
    held_out_end = validation_metrics(trainer, val_ds, val_keep, patch_size)
    world_images = (st.step - start_step) * t.batch_size * world
    summary = TrainSummary(
        run_dir=str(run_dir), status=status, steps=st.step, epochs=st.epoch, stage=st.stage,
        stage_switch_step=st.stage_switch_step, held_out_start=held_out_start, held_out_end=held_out_end,
        last_losses=last_losses, images_per_s=world_images / seconds if seconds > 0 else 0.0, seconds=seconds,
        world_size=world, device=str(dev), data_version=data_version, train_seconds=st.seconds,
        machine=machine_facts(dev, world), warnings=trainer.warnings,
        events=list(st.events), samples=samples)
    if rank == 0:
        if not samples or not samples[-1].endswith(f"step-{st.step}.png"):
            sample()
        plot = save_loss_plot(run_dir)
        summary.samples = samples + ([str(plot)] if plot else [])
        atomic_write_json(run_dir / "metrics.json", {"training": asdict(summary)})
    _barrier(world)
    return summary


def run_training(cfg: TrainRunConfig) -> dict[str, Any]:
    """The train stage over its one config (``edgefill train``, torchrun's ranks, the ``train-model``
    flow): ``cfg.nproc`` > 1 launches that many ranks through torchrun (:func:`models.ddp.launch_training`,
    the one place torchrun is started) and reads the run's summary back; otherwise trains in this
    process (a torchrun rank is such a process). Returns ``asdict(TrainSummary)``."""
    if cfg.device is not None:
        require_device(cfg.device)  # here, not in each torchrun rank
    if cfg.nproc > 1:
        from models.ddp import launch_training

        launch_training(cfg)
        return json.loads((Path(cfg.out) / "metrics.json").read_text())["training"]
    try:
        summary = train(cfg.store, cfg.out, cfg.resolve(), resume=cfg.resume, init_from=cfg.init_from,
                        device=cfg.device, progress=cfg.progress)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return asdict(summary)


if __name__ == "__main__":  # torchrun -m models.train STORE --config full --out RUN_DIR: the CLI's train command
    import sys

    from flows.cli import main

    raise SystemExit(main(["train", *sys.argv[1:]]))
