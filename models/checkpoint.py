"""Run directories, atomic checkpoints and the inference bundle.

RUN_DIR layout::

    config.json            format, name, model_config (architecture, losses, stage schedule,
                           training), architecture hash, radiometry, edge_params, patch_size,
                           data_version (the store's config hash), store, created, warnings
    checkpoints/last.pt    latest checkpoint (a hard link to / copy of the newest step file)
    checkpoints/step-N.pt  checkpoint after N generator steps (the newest few are kept)
    checkpoints/best.pt    weights of the step with the best validation hole PSNR (model selection)
    metrics.json           training summary and evaluation metrics
    tb/                    TensorBoard scalars;  samples/  sample grids (PNG) and loss plots

A checkpoint is a plain dict readable with ``torch.load(weights_only=True)``:
``format``, ``architecture_hash``, ``step``, ``epoch``, ``stage`` (G1 loss stage 1 or 2),
``models`` {g1, g2, d1, d2: state dicts}, optionally ``optimizers``, ``rng`` and
``data_position``. Every write goes to a temporary file in the same folder, then
``os.replace`` - a reader never sees half a checkpoint.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.config import ModelConfig
from models.networks import EdgeGenerator, InpaintGenerator
from pipeline.atomic_io import atomic_path, atomic_write_json
from pipeline.edges import EdgeParams
from pipeline.store import Radiometry

RUN_FORMAT = "edgefill-run/1"
CHECKPOINT_FORMAT = "edgefill-checkpoint/1"


class CheckpointError(ValueError):
    """A run dir or checkpoint is missing, corrupt, or from another architecture."""


@dataclass
class InferenceBundle:
    """Everything inference needs: both generators in eval mode plus the data conventions."""

    edge_generator: EdgeGenerator
    inpaint_generator: InpaintGenerator
    model_config: ModelConfig
    radiometry: Radiometry
    edge_params: EdgeParams
    patch_size: int
    name: str
    run_dir: Path | None = None


def atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def write_run_config(run_dir: Path, cfg: ModelConfig, *, radiometry: Radiometry, edge_params: EdgeParams,
                     patch_size: int, data_version: str = "", store: str = "", name: str | None = None,
                     warnings: list[str] | None = None) -> Path:
    """Write ``RUN_DIR/config.json`` (atomically) and return its path."""
    meta = {
        "format": RUN_FORMAT, "name": name or Path(run_dir).name,
        "model_config": cfg.model_dump(mode="json"), "architecture": cfg.architecture(),
        "architecture_hash": cfg.architecture_hash(), "radiometry": radiometry.model_dump(),
        "edge_params": edge_params.model_dump(), "patch_size": int(patch_size),
        "data_version": data_version, "store": str(store),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "warnings": list(warnings or []),
    }
    path = Path(run_dir) / "config.json"
    atomic_write_json(path, meta)
    return path


def read_run_config(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run directory: {path.name} is missing")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if meta.get("format") != RUN_FORMAT:
        raise CheckpointError(f"{path}: format {meta.get('format')!r} is not {RUN_FORMAT!r}")
    return meta


def run_model_config(meta: dict[str, Any]) -> ModelConfig:
    try:
        return ModelConfig.model_validate(meta["model_config"])
    except Exception as exc:
        raise CheckpointError(f"run config holds an invalid model_config: {exc}") from exc


def unwrap(net: nn.Module) -> nn.Module:
    """The plain module under DDP / torch.compile wrappers (whose state dict keys differ)."""
    while True:
        if hasattr(net, "module"):
            net = net.module
        elif hasattr(net, "_orig_mod"):
            net = net._orig_mod
        else:
            return net


def save_checkpoint(run_dir: Path, payload: dict[str, Any], *, step: int, keep: int = 3) -> Path:
    """Write ``checkpoints/step-N.pt`` and point ``last.pt`` at it, both atomically; keep the
    newest ``keep`` step files. ``payload`` must hold ``models`` and ``architecture_hash``."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    payload = {"format": CHECKPOINT_FORMAT, "step": int(step), **payload}
    step_path = ckpt_dir / f"step-{int(step)}.pt"
    atomic_torch_save(payload, step_path)
    with atomic_path(ckpt_dir / "last.pt", fsync=False) as tmp:  # the step file is already synced
        try:
            os.link(step_path, tmp)
        except OSError:  # filesystems without hard links
            shutil.copyfile(step_path, tmp)
    steps = sorted(ckpt_dir.glob("step-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    for old in steps[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return step_path


def inference_weights(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The G1/G2 state dicts to infer with: the weight averages (``ema``) when the run kept them,
    else the trained weights; D1/D2 as trained."""
    return {**ckpt["models"], **(ckpt.get("ema") or {})}


def save_best(run_dir: Path, payload: dict[str, Any], *, step: int) -> Path:
    """``checkpoints/best.pt``: the weights (no optimiser state) of the best validation step so far."""
    slim = {k: v for k, v in payload.items() if k not in ("optimizers", "rng", "rng_per_rank")}
    path = Path(run_dir) / "checkpoints" / "best.pt"
    atomic_torch_save({"format": CHECKPOINT_FORMAT, "step": int(step), **slim}, path)
    return path


def load_checkpoint(path: Path, *, architecture_hash: str | None = None, map_location="cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; :class:`CheckpointError` if it is missing,
    corrupt, not an edgefill checkpoint or (given ``architecture_hash``) another architecture."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable: {type(exc).__name__}: {exc}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or "models" not in ckpt:
        raise CheckpointError(f"{path} is not an edgefill checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    if architecture_hash is not None and ckpt.get("architecture_hash") != architecture_hash:
        raise CheckpointError(f"checkpoint {path} is from another architecture "
                              f"(hash {ckpt.get('architecture_hash')}, expected {architecture_hash})")
    return ckpt


def load_state(net: nn.Module, state: dict[str, torch.Tensor] | None, what: str) -> None:
    """``load_state_dict(strict=True)`` with a :class:`CheckpointError` naming the mismatch."""
    if state is None:
        raise CheckpointError(f"checkpoint holds no weights for {what}")
    try:
        unwrap(net).load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise CheckpointError(f"{what} weights do not fit this architecture: {' '.join(first)}") from exc


def save_inference_bundle(run_dir: str | Path, *, edge_generator: nn.Module, inpaint_generator: nn.Module,
                          model_config: ModelConfig, radiometry: Radiometry = Radiometry(),
                          edge_params: EdgeParams = EdgeParams(), patch_size: int = 256,
                          name: str | None = None, data_version: str = "",
                          discriminators: dict[str, nn.Module] | None = None) -> Path:
    """Write a loadable run dir (config.json + checkpoints/last.pt) from in-memory generators."""
    run_dir = Path(run_dir)
    models = {"g1": unwrap(edge_generator).state_dict(), "g2": unwrap(inpaint_generator).state_dict()}
    for key, net in (discriminators or {}).items():
        models[key] = unwrap(net).state_dict()
    write_run_config(run_dir, model_config, radiometry=radiometry, edge_params=edge_params,
                     patch_size=patch_size, data_version=data_version, name=name)
    save_checkpoint(run_dir, {"architecture_hash": model_config.architecture_hash(), "models": models,
                              "epoch": 0, "stage": 1}, step=0)
    return run_dir


def load_inference_bundle(run_dir: str | Path, device: str | torch.device = "cpu") -> InferenceBundle:
    """Load G1 and G2 (eval mode, on ``device``) from a run directory (registry names and
    ``"current"``: :func:`models.registry.load_model`)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir} is not a run directory (for a registry name use models.registry.load_model)")
    meta = read_run_config(run_dir)
    cfg = run_model_config(meta)
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt", architecture_hash=cfg.architecture_hash())
    g1, g2 = EdgeGenerator(cfg), InpaintGenerator(cfg)
    weights = inference_weights(ckpt)
    load_state(g1, weights.get("g1"), "G1 (edge generator)")
    load_state(g2, weights.get("g2"), "G2 (inpainting generator)")
    try:
        radiometry = Radiometry(**meta["radiometry"])
        edge_params = EdgeParams(**meta["edge_params"])
    except Exception as exc:
        raise CheckpointError(f"{run_dir}/config.json: bad radiometry/edge_params: {exc}") from exc
    return InferenceBundle(edge_generator=g1.to(device).eval(), inpaint_generator=g2.to(device).eval(),
                           model_config=cfg, radiometry=radiometry, edge_params=edge_params,
                           patch_size=int(meta["patch_size"]), name=str(meta.get("name", run_dir.name)),
                           run_dir=run_dir)
