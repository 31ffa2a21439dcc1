"""Shipping a trained model with edgefill: slim half-precision weights, index entry, model card.

A shipped model is a slim run dir under ``models/weights/<name>/`` (read-only, see
:mod:`models.registry`): ``config.json`` (as written by training: architecture, radiometry,
edge parameters), ``checkpoints/last.pt`` holding only G1 and G2, stored in float16 when
``half`` (loaded back into float32 networks; the card reports both precisions' scores) and
``MODEL_CARD.md``. ``models/weights/index.json`` lists it; ``default`` names the model that
``current`` resolves to while the user's registry has none.

Use :func:`ship_model` from a finished run (the ``step``: which checkpoint, e.g. the best
validation one) and :func:`card_tables` to turn evaluations into the card's tables.
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import torch

from models.checkpoint import (CHECKPOINT_FORMAT, CheckpointError, atomic_torch_save, load_checkpoint, read_run_config,
                               run_model_config)
from models.evaluate import IMAGE_METRICS, by_bin, markdown_table, summarise
from models.registry import SHIPPED_DIR
from pipeline.atomic_io import atomic_write_json, atomic_write_text

CARD = "MODEL_CARD.md"


def slim_weights(ckpt: dict[str, Any], half: bool) -> dict[str, Any]:
    """G1 and G2 state dicts only (floating tensors in float16 when ``half``)."""
    def conv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: (v.half() if half and v.is_floating_point() else v).contiguous() for k, v in state.items()}

    return {"format": CHECKPOINT_FORMAT, "architecture_hash": ckpt["architecture_hash"], "step": int(ckpt["step"]),
            "epoch": int(ckpt.get("epoch", 0)), "stage": int(ckpt.get("stage", 1)),
            "models": {k: conv(ckpt["models"][k]) for k in ("g1", "g2")}}


def ship_model(run_dir: str | Path, name: str, *, checkpoint: str = "best.pt", half: bool = True,
               metrics: dict[str, Any] | None = None, card: str | None = None, default: bool = True,
               dest: Path | None = None) -> Path:
    """Write ``dest/name`` (default ``models/weights/name``) from ``run_dir/checkpoints/checkpoint``
    and list it in ``dest/index.json`` (``default``: make it the model ``current`` falls back to)."""
    run_dir, dest = Path(run_dir), Path(dest or SHIPPED_DIR)
    meta = read_run_config(run_dir)
    cfg = run_model_config(meta)
    ckpt = load_checkpoint(run_dir / "checkpoints" / checkpoint, architecture_hash=cfg.architecture_hash())
    out = dest / name
    atomic_torch_save(slim_weights(ckpt, half), out / "checkpoints" / "last.pt")
    atomic_write_json(out / "config.json", {**meta, "name": name, "shipped": {"source_run": run_dir.name,
                                                                              "checkpoint": checkpoint,
                                                                              "half_precision": half}})
    if card is not None:
        atomic_write_text(out / CARD, card)
    index_path = dest / "index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {"default": None, "models": {}}
    index["models"][name] = {"name": name, "run_dir": name, "config": meta["model_config"],
                             "architecture_hash": cfg.architecture_hash(), "data_version": meta.get("data_version", ""),
                             "metrics": metrics or {}, "step": int(ckpt["step"]), "read_only": True,
                             "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    if default or not index.get("default"):
        index["default"] = name
    atomic_write_json(index_path, index)
    return out


def card_tables(records: list[dict]) -> str:
    """Markdown tables of deployment-path records: by hole-ratio bin, then by mask kind x bin."""
    cols = ["method", "ratio_bin", "n", *IMAGE_METRICS]
    bins = [r for r in by_bin(records) if r["ratio_bin"] != "all"]
    kinds = [r for r in summarise(records) if r["mask_kind"] != "all"]
    return ("By hole-ratio bin (every mask kind):\n\n" + markdown_table(bins, cols)
            + "\nBy mask kind and bin:\n\n" + markdown_table(kinds, ["method", "mask_kind", *cols[1:]]))


def margins_over(records: list[dict], baseline: str = "gdal", method: str = "model") -> dict[str, float]:
    """Hole PSNR of ``method`` minus ``baseline`` (dB) per hole-ratio bin, over every mask kind."""
    rows = {(r["method"], r["ratio_bin"]): r["hole_psnr"] for r in by_bin(records)}
    return {b: rows[(method, b)] - rows[(baseline, b)] for (m, b) in rows if m == method and (baseline, b) in rows}


def check_shipped(path: Path) -> None:
    """Raise :class:`CheckpointError` unless ``path`` is a loadable shipped model."""
    from models.checkpoint import load_inference_bundle

    load_inference_bundle(path)
    if not (path / CARD).is_file():
        raise CheckpointError(f"shipped model {path} has no {CARD}")


def store_data_table(store: str | Path) -> str:
    """Markdown: every scene of the store by split, with sensor and valid patch count."""
    import numpy as np

    from pipeline.store import open_store

    g = open_store(store)
    valid = np.asarray(g["valid"][:])
    scene, sensor, split = (np.asarray(g[k][:]) for k in ("scene_id", "sensor", "split"))
    rows = {}
    for s, sen, sp in zip(scene[valid], sensor[valid], split[valid]):
        rows.setdefault((str(sp), str(s), str(sen)), 0)
        rows[(str(sp), str(s), str(sen))] += 1
    order = {"train": 0, "validation": 1, "test": 2}
    lines = ["| split | scene | sensor | patches |", "|---|---|---|---|"]
    lines += [f"| {sp} | {s} | {sen} | {n} |" for (sp, s, sen), n in sorted(rows.items(), key=lambda kv: (order[kv[0][0]], kv[0][1]))]
    totals = {sp: sum(n for (s2, _, _), n in rows.items() if s2 == sp) for sp in order}
    return "\n".join(lines) + "\n\nPatches (256 x 256 px): " + ", ".join(f"{k} {v}" for k, v in totals.items()) + "\n"


def score_for_card(model_dir: str | Path, store: str | Path, split: str, pairs_per_bin: int | None = None) -> list[dict]:
    """Deployment-path records of the model (as shipped) and every baseline on ``split``."""
    from models.baselines import BASELINES
    from models.evaluate import ModelFill, score_pairs, select_pairs
    from pipeline.dataset import EvalPairs

    ds = EvalPairs(store, split)
    keep = select_pairs(ds, pairs_per_bin)
    return score_pairs(ds, keep, ModelFill.load(model_dir), ("model",) + BASELINES)
