"""Model registry: the user's registry plus the read-only models shipped with edgefill.

- **User registry**: ``$EDGEFILL_REGISTRY``, else ``<edgefill home>/registry`` where the home is
  ``$EDGEFILL_HOME``, else ``$XDG_DATA_HOME/edgefill``, else ``~/.local/share/edgefill``: user runs
  never land inside the source tree or the installed package.
- **Shipped models**: ``models/weights/<name>/`` (config.json, checkpoints/last.pt with G1 and G2
  in half precision, MODEL_CARD.md), listed in ``models/weights/index.json`` whose ``default``
  is the model ``current`` means while the user registry has no current model of its own. They
  are read-only: registering, training and promotion never write there.

User registry layout::

    index.json      {"current": name | null, "models": {name: entry}, "history": [...]}
    <name>/         a self-contained run dir (config.json, checkpoints/last.pt with G1, G2,
                    D1, D2 weights - no optimiser state - and metrics.json)

An entry records ``name``, ``version`` (1, 2, ... per config preset), ``run_dir`` (relative
to the registry), ``source_run_dir``, ``config`` (the ModelConfig), ``data_version`` (the
store's ``config_hash``, :class:`pipeline.store.StoreMeta`), ``metrics``, ``created``. Registering never moves
``current``; only :func:`promote_if_better` / :func:`set_current` do.

Primary metric for promotion: :data:`PRIMARY_METRIC` = ``hole_psnr`` (mean PSNR in dB over the
hole region of the VALIDATION split's fixed pairings, through the deployment path; higher is
better). Test metrics are stored beside it (``metrics["test"]``) and never decide.
"""
from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.checkpoint import (CheckpointError, InferenceBundle, atomic_torch_save, inference_weights, load_checkpoint,
                               load_inference_bundle, read_run_config, run_model_config)
from pipeline.atomic_io import atomic_dir, atomic_write_json

SHIPPED_DIR = Path(__file__).resolve().parent / "weights"
PRIMARY_METRIC = "hole_psnr"
INDEX = "index.json"


def edgefill_home() -> Path:
    """Where edgefill keeps user state: ``$EDGEFILL_HOME``, ``$XDG_DATA_HOME/edgefill`` or
    ``~/.local/share/edgefill``."""
    if os.environ.get("EDGEFILL_HOME"):
        return Path(os.environ["EDGEFILL_HOME"])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "edgefill"


def registry_dir() -> Path:
    env = os.environ.get("EDGEFILL_REGISTRY")
    return Path(env) if env else edgefill_home() / "registry"


def shipped_index() -> dict[str, Any]:
    """``models/weights/index.json``: ``{"default": name | null, "models": {name: entry}}``."""
    path = SHIPPED_DIR / INDEX
    if not path.is_file():
        return {"default": None, "models": {}}
    return json.loads(path.read_text())


def load_index(root: Path | None = None) -> dict[str, Any]:
    path = (root or registry_dir()) / INDEX
    if not path.is_file():
        return {"current": None, "models": {}, "history": []}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"registry index {path} is corrupt: {exc}") from exc


def _save_index(index: dict[str, Any], root: Path) -> None:
    atomic_write_json(root / INDEX, index)


def list_models(root: Path | None = None) -> list[str]:
    """Names in the user registry and the shipped models."""
    return sorted(set(load_index(root)["models"]) | set(shipped_index()["models"]))


def current_model(root: Path | None = None) -> str | None:
    """The user registry's current model, else the shipped default (None if neither)."""
    return load_index(root).get("current") or shipped_index().get("default")


def _entry(name: str, root: Path) -> dict[str, Any] | None:
    return load_index(root)["models"].get(name) or shipped_index()["models"].get(name)


def resolve_model(name_or_path: str | Path) -> Path:
    """A run dir for ``name_or_path``: an existing directory, ``"current"``, or a registry name.

    Raises ``KeyError`` naming the known models when the name is unknown."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    root = registry_dir()
    index, shipped = load_index(root), shipped_index()
    name = str(name_or_path)
    if name == "current":
        name = current_model(root)
        if not name:
            raise KeyError(f"registry {root} has no current model and no model is shipped; "
                           f"known models: {list_models(root)}")
    if name in index["models"]:
        return root / index["models"][name]["run_dir"]
    if name in shipped["models"]:
        return SHIPPED_DIR / shipped["models"][name]["run_dir"]
    raise KeyError(f"unknown model {name!r} (not a directory, not in registry {root}, not shipped); "
                   f"known models: {list_models(root)}")


def load_model(name_or_path: str | Path, device: str | torch.device = "cpu") -> InferenceBundle:
    """G1 and G2 of a run dir, ``"current"`` or a registry name (:func:`resolve_model`), ready for inference."""
    return load_inference_bundle(resolve_model(name_or_path), device)


def register_model(run_dir: str | Path, *, metrics: dict[str, Any] | None = None, name: str | None = None,
                   root: Path | None = None) -> dict[str, Any]:
    """Copy a finished run's weights (no optimiser state) into the registry and add an entry.

    Does not move ``current``. Returns the entry; registering the same run at the same step again
    returns the existing entry (a rerun of a finished training adds no duplicate)."""
    run_dir = Path(run_dir)
    root = root or registry_dir()
    meta = read_run_config(run_dir)
    cfg = run_model_config(meta)
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt", architecture_hash=cfg.architecture_hash())
    index = load_index(root)
    source, step = str(run_dir.resolve()), int(ckpt.get("step", 0))
    for entry in index["models"].values():  # the same run at the same step is the same model
        if entry.get("source_run_dir") == source and entry.get("step") == step and name in (None, entry["name"]):
            return entry
    version = 1 + sum(1 for e in index["models"].values() if e["config"].get("name") == cfg.name)
    if name is None:  # the next free version: a fine-tune of a shipped model must not take the shipped name
        taken = set(index["models"]) | set(shipped_index()["models"])
        while f"{cfg.name}-v{version}" in taken:
            version += 1
        name = f"{cfg.name}-v{version}"
    if name in index["models"] or name in shipped_index()["models"]:
        raise ValueError(f"model {name!r} is already registered in {root} or shipped")
    if metrics is None:
        metrics_path = run_dir / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    with atomic_dir(root / name) as staging:
        slim = {k: ckpt[k] for k in ("format", "architecture_hash", "step", "epoch", "stage") if k in ckpt}
        slim["models"] = inference_weights(ckpt)  # what inference uses (averaged G1/G2 if the run kept them)
        atomic_torch_save(slim, staging / "checkpoints" / "last.pt")
        meta["name"] = name
        atomic_write_json(staging / "config.json", meta)
        atomic_write_json(staging / "metrics.json", metrics)
    entry = {"name": name, "version": version, "run_dir": name, "source_run_dir": source,
             "config": meta["model_config"], "data_version": meta.get("data_version", ""), "metrics": metrics,
             "step": step,
             "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    index["models"][name] = entry
    _save_index(index, root)
    return entry


def set_current(name: str, reason: str, root: Path | None = None) -> None:
    root = root or registry_dir()
    index = load_index(root)
    if _entry(name, root) is None:
        raise KeyError(f"unknown model {name!r}; known models: {list_models(root)}")
    index["history"].append({"from": current_model(root), "to": name, "reason": reason,
                             "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
    index["current"] = name
    _save_index(index, root)


@dataclass
class PromotionDecision:
    promoted: bool
    candidate: str
    current: str | None
    metric: str
    candidate_value: float | None
    current_value: float | None
    reason: str


def promote_if_better(candidate: str, *, metric: str = PRIMARY_METRIC, higher_is_better: bool = True,
                      min_improvement: float = 0.0, current_value: float | None = None,
                      root: Path | None = None) -> PromotionDecision:
    """Move ``current`` to ``candidate`` only if it beats the current model on ``metric``
    (by more than ``min_improvement``); with no current model the candidate is promoted.

    ``current_value``: the current model's score re-measured on the same validation pairings as the
    candidate (retraining does this); default = the value stored in its registry entry."""
    root = root or registry_dir()
    index = load_index(root)
    if candidate not in index["models"]:
        raise KeyError(f"unknown model {candidate!r}; known models: {sorted(index['models'])}")
    cand_value = index["models"][candidate]["metrics"].get(metric)
    if cand_value is None:
        raise ValueError(f"candidate {candidate!r} has no metric {metric!r}; metrics: {sorted(index['models'][candidate]['metrics'])}")
    cur = current_model(root)
    cur_entry = _entry(cur, root) if cur else None
    cur_value = current_value if current_value is not None else (cur_entry or {}).get("metrics", {}).get(metric)
    if cur is None or cur_value is None:
        reason = f"no current model with {metric}; promoting {candidate} ({metric}={cand_value:.4f})"
        promoted = True
    else:
        delta = (cand_value - cur_value) if higher_is_better else (cur_value - cand_value)
        promoted = delta > min_improvement
        better = "better" if promoted else "not better"
        reason = (f"{candidate} {metric}={cand_value:.4f} vs current {cur} {metric}={cur_value:.4f}: "
                  f"{better} (improvement {delta:+.4f}, required > {min_improvement})"
                  + ("" if promoted else f"; keeping {cur}"))
    if promoted:
        set_current(candidate, reason, root)
    return PromotionDecision(promoted, candidate, cur, metric, float(cand_value),
                             None if cur_value is None else float(cur_value), reason)


__all__ = ["CheckpointError", "PRIMARY_METRIC", "SHIPPED_DIR", "edgefill_home", "registry_dir", "resolve_model",
           "load_model", "register_model", "set_current", "promote_if_better", "PromotionDecision", "list_models", "current_model",
           "load_index", "shipped_index"]
