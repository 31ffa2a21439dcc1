"""Evaluation through the deployment path: the model and classical fills on FIXED pairings.

Every number is what a user gets from ``edgefill inpaint``: each pair's stored patch goes
through :func:`models.inference.fill_stored_patch` (the tiled engine: known edges of the masked
tile, G1, edge composite, G2, blending) and is written back in the stored dtype by
:func:`models.inference.composite` (valid pixels bit for bit, filled pixels rounded). The
classical fills are composited the same way. Scores compare the composite with the truth in the
store's radiometry (``Radiometry.to_unit``), per (method, mask kind, hole-ratio bin): hole_psnr,
hole_ssim, hole_l1, comp_psnr, comp_ssim, comp_l1 (definitions in :mod:`models.metrics`) and,
for the model, G1's edge precision / recall / F1 inside the hole (micro-averaged). Rows with kind
``all`` / bin ``all`` aggregate a method's pairs.

``split``: ``validation`` (every decision: stage switch, selection, promotion) or ``test``
(reported, never used for a decision). ``pairs_per_bin`` keeps the first k rows of every
(kind, bin) cell. The model converts stored values as at deployment: the store's radiometry
when it has the model's dtype, else a per-scene stretch over that scene's patches
(:meth:`Radiometry.stretch`, as ``edgefill inpaint`` does for a scene).

Outputs (``write_report``): ``evaluation.csv``, ``evaluation.md`` and ``evaluation.json``.
"""
from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from models.baselines import BASELINES, run_baseline
from models.config import EvaluateConfig
from models.inference import TilingConfig, composite, fill_stored_patch, networks_fill_fn
from models.losses import edge_mape_counts
from models.metrics import EdgeCounts, image_metrics
from pipeline.atomic_io import atomic_write_bytes, atomic_write_json
from pipeline.dataset import EvalPairs
from pipeline.edges import EdgeParams
from pipeline.masks import RATIO_BINS, ratio_bin
from pipeline.store import Radiometry

IMAGE_METRICS = ("hole_psnr", "hole_ssim", "hole_l1", "comp_psnr", "comp_ssim", "comp_l1")
EDGE_METRICS = ("edge_precision", "edge_recall", "edge_f1")


@dataclass
class EvalResult:
    rows: list[dict]
    overall: dict[str, dict[str, float]]  # method -> metrics over all pairs
    n_pairs: int
    model: str | None
    split: str = "test"
    files: dict[str, str] = field(default_factory=dict)


def bin_label(ratio: float) -> str:
    b = int(ratio_bin(ratio)[0])
    if b < 0:
        return "other"
    lo, hi = RATIO_BINS[b]
    return f"{int(round(lo * 100))}-{int(round(hi * 100))}%"


def select_pairs(ds: EvalPairs, pairs_per_bin: int | None) -> list[int]:
    """Indices of pairings to score: all, or the first ``pairs_per_bin`` of every (kind, bin) cell."""
    if pairs_per_bin is None:
        return list(range(len(ds)))
    seen: dict[tuple[str, str], int] = defaultdict(int)
    keep = []
    for i, (_, m, _) in enumerate(ds.pairings[:, :3]):
        key = (str(ds.mask_kind[m]), bin_label(float(ds.mask_ratio[m])))
        if seen[key] < pairs_per_bin:
            seen[key] += 1
            keep.append(i)
    return keep


class ModelFill:
    """The model as a deployment-path method: ``(stored, hole) -> (filled stored, G1 edges)``.

    Build it from a run dir / registry name (:meth:`load`) or from in-memory generators
    (training's validation). ``radiometry`` is the model's; ``store_radiometry_for`` decides per
    scene which conversion the model gets (see module docstring)."""

    def __init__(self, g1, g2, radiometry: Radiometry, edge_params: EdgeParams, patch_size: int,
                 device: str = "cpu", name: str = "model"):
        self.edges: list[np.ndarray] = []
        self.fill_fn = networks_fill_fn(g1, g2, device, edge_sink=self.edges)
        self.radiometry, self.edge_params, self.name = radiometry, edge_params, name
        self.tiling = TilingConfig(tile=patch_size, overlap=min(32, patch_size // 2), batch_size=1)

    @classmethod
    def load(cls, model: str | Path, device: str = "cpu") -> "ModelFill":
        from models.registry import load_model

        b = load_model(model, device)
        return cls(b.edge_generator, b.inpaint_generator, b.radiometry, b.edge_params, b.patch_size, device, b.name)

    def __call__(self, stored: np.ndarray, hole: np.ndarray, radiometry: Radiometry) -> tuple[np.ndarray, np.ndarray]:
        self.edges.clear()
        out = fill_stored_patch(stored, hole, self.fill_fn, radiometry, self.edge_params, self.tiling)
        edge = self.edges[0][0, 0] if self.edges else np.zeros(hole.shape, np.float32)
        return out, edge


def baseline_fill(name: str) -> Callable[[np.ndarray, np.ndarray, Radiometry], np.ndarray]:
    """A classical fill as a deployment-path method: masked unit image -> fill -> composite."""
    def fill(stored: np.ndarray, hole: np.ndarray, radiometry: Radiometry) -> np.ndarray:
        unit = radiometry.to_unit(stored)
        return composite(stored, run_baseline(name, unit * ~hole, hole), hole, radiometry)
    return fill


def _scene_radiometries(ds: EvalPairs, keep: list[int], model_radiometry: Radiometry | None) -> dict[int, Radiometry]:
    """Conversion the model gets for each scored image (deployment rule, per scene)."""
    images = sorted({int(ds.pairings[i, 0]) for i in keep})
    if model_radiometry is None or model_radiometry.dtype == ds.radiometry.dtype:
        return {i: (model_radiometry or ds.radiometry) for i in images}
    scene_ids = np.asarray(ds.group["scene_id"][:])
    out: dict[int, Radiometry] = {}
    for scene in sorted({str(scene_ids[i]) for i in images}):
        members = [i for i in images if scene_ids[i] == scene]
        values = np.concatenate([np.asarray(ds.group["images"][i]).ravel() for i in members])
        rad = Radiometry.stretch(values[values != 0], ds.radiometry.dtype)
        out.update({i: rad for i in members})
    return out


def score_pairs(ds: EvalPairs, keep: list[int], model: ModelFill | None, methods: tuple[str, ...]) -> list[dict]:
    """Deployment-path scores of ``methods`` ("model" and/or baseline names) on ``ds`` rows ``keep``.
    Returns one dict per (method, pair): metrics plus ``mask_kind``, ``ratio_bin`` and, for the
    model, ``edge_counts``."""
    if "model" in methods and model is None:
        raise ValueError("method 'model' needs a model")
    rads = _scene_radiometries(ds, keep, model.radiometry if model is not None else None)
    fills = {m: baseline_fill(m) for m in methods if m != "model"}
    records = []
    for i in keep:
        stored, hole = ds.stored(i)
        index, mask_index = (int(v) for v in ds.pairings[i, :2])
        truth = ds.radiometry.to_unit(stored)
        cell = {"mask_kind": str(ds.mask_kind[mask_index]), "ratio_bin": bin_label(float(hole.mean()))}
        for method in methods:
            counts = None
            extra = {}
            if method == "model":
                out, edge = model(stored, hole, rads[index])
                target = np.asarray(ds.group["edges"][index][0])
                counts = EdgeCounts.of(edge, target, hole)
                errors, true = edge_mape_counts(*(torch.from_numpy(np.asarray(a, np.float32))[None, None]
                                                  for a in (edge, target, hole)))
                extra = {"edge_errors": float(errors), "edge_true": float(true)}
            else:
                out = fills[method](stored, hole, ds.radiometry)
            scores = image_metrics(ds.radiometry.to_unit(out), truth, hole)
            records.append({"method": method, **cell, **scores, "edge_counts": counts, **extra})
    return records


def validation_scores(records: list[dict]) -> dict[str, float]:
    """Pooled scores of the model's records: mean hole PSNR / L1 / SSIM and the tolerant edge MAPE
    (errors and true edge pixels summed over pairs, :func:`models.losses.edge_mape`)."""
    mine = [r for r in records if r["method"] == "model"]
    if not mine:
        raise ValueError("no model records to summarise")
    true = sum(r["edge_true"] for r in mine)
    return {"hole_psnr": float(np.mean([r["hole_psnr"] for r in mine])),
            "hole_l1": float(np.mean([r["hole_l1"] for r in mine])),
            "hole_ssim": float(np.mean([r["hole_ssim"] for r in mine])),
            "edge_mape": float(sum(r["edge_errors"] for r in mine) / max(true, 1.0))}


def summarise(records: list[dict]) -> list[dict]:
    """Mean metrics per (method, kind, bin), per (method, kind, all) and per (method, all, all)."""
    sums: dict[tuple[str, str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    edges_acc: dict[tuple[str, str, str], EdgeCounts] = defaultdict(EdgeCounts)
    for r in records:
        for kind, b in ((r["mask_kind"], r["ratio_bin"]), (r["mask_kind"], "all"), ("all", "all")):
            key = (r["method"], kind, b)
            for k in IMAGE_METRICS:
                sums[key][k].append(r[k])
            if r.get("edge_counts") is not None:
                edges_acc[key] = edges_acc[key] + r["edge_counts"]
    rows = []
    for (method, kind, b), vals in sorted(sums.items(), key=lambda kv: (kv[0][0], kv[0][1] == "all", kv[0][1], kv[0][2] == "all", kv[0][2])):
        row = {"method": method, "mask_kind": kind, "ratio_bin": b, "n": len(vals["hole_l1"])}
        row.update({k: float(np.nanmean(vals[k])) for k in IMAGE_METRICS})
        if (method, kind, b) in edges_acc:
            row.update(edges_acc[(method, kind, b)].scores())
        rows.append(row)
    return rows


def by_bin(records: list[dict]) -> list[dict]:
    """Mean metrics per (method, hole-ratio bin) over every mask kind (the bench's table)."""
    rows = summarise([{**r, "mask_kind": "any"} for r in records if r["ratio_bin"] != "other"])
    return [r for r in rows if r["mask_kind"] == "any"]  # summarise's (all kinds, all bins) row repeats (any, all)


def evaluate(store: str | Path, model: str | Path | None = None, *, methods: tuple[str, ...] | None = None,
             pairs_per_bin: int | None = None, split: str = "test", device: str = "cpu") -> EvalResult:
    """Score ``model`` (run dir or registry name; None = baselines only) and ``methods`` on the
    fixed ``split`` pairings of ``store``, through the deployment path."""
    from models.device import require_device

    require_device(device)
    ds = EvalPairs(store, split)
    if len(ds) == 0:
        raise ValueError(f"store {store} has no {split} pairings to evaluate on")
    methods = tuple(methods) if methods is not None else ((("model",) if model is not None else ()) + BASELINES)
    if "model" in methods and model is None:
        raise ValueError("method 'model' needs --model RUN_DIR_OR_NAME")
    fill = ModelFill.load(model, device) if "model" in methods else None
    keep = select_pairs(ds, pairs_per_bin)
    rows = summarise(score_pairs(ds, keep, fill, methods))
    overall = {r["method"]: {k: v for k, v in r.items() if k not in ("method", "mask_kind", "ratio_bin")}
               for r in rows if r["mask_kind"] == "all"}
    return EvalResult(rows=rows, overall=overall, n_pairs=len(keep), model=None if model is None else str(model),
                      split=split)


def evaluate_run(cfg: EvaluateConfig) -> tuple[EvalResult, dict[str, str]]:
    """The evaluate stage over its one config (``edgefill evaluate``, the flows' evaluation tasks):
    :func:`evaluate` of ``cfg.model`` (+ the baselines unless ``cfg.baselines`` is off), its report
    written to ``cfg.out`` (default ``RUN_DIR/eval``, or ``./eval`` for baselines only)."""
    from models.registry import resolve_model

    methods = (("model",) if cfg.model else ()) + (BASELINES if cfg.baselines else ())
    result = evaluate(cfg.store, cfg.model, methods=methods, pairs_per_bin=cfg.pairs_per_bin, split=cfg.split,
                      device=cfg.device)
    folder = cfg.out or ((resolve_model(cfg.model) / "eval") if cfg.model else Path("eval"))
    return result, write_report(result, folder)


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if np.isnan(v) else f"{v:.4f}"
    return str(v)


def markdown_table(rows: list[dict], cols: list[str] | None = None) -> str:
    cols = cols or ["method", "mask_kind", "ratio_bin", "n", *IMAGE_METRICS, *EDGE_METRICS]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_report(result: EvalResult, out_dir: str | Path) -> dict[str, str]:
    """Write evaluation.csv / .md / .json into ``out_dir`` (each atomically)."""
    out_dir = Path(out_dir)
    cols = ["method", "mask_kind", "ratio_bin", "n", *IMAGE_METRICS, *EDGE_METRICS]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for r in result.rows:
        w.writerow({c: r.get(c, "") for c in cols})
    atomic_write_bytes(out_dir / "evaluation.csv", buf.getvalue().encode())
    header = (f"# Evaluation: {result.model or 'baselines'} on {result.n_pairs} fixed {result.split} pairs\n\n"
              "Through the deployment path (tiled fill, composite in the stored dtype). PSNR dB (data range 1), "
              "SSIM (Gaussian window sigma 1.5, data range 1), L1; hole = inside the mask, comp = whole "
              "composite image; edge P/R/F1 of G1 inside the hole (threshold 0.5).\n\n")
    atomic_write_bytes(out_dir / "evaluation.md", (header + markdown_table(result.rows)).encode())
    atomic_write_json(out_dir / "evaluation.json", {"model": result.model, "split": result.split,
                                                    "n_pairs": result.n_pairs, "overall": result.overall,
                                                    "rows": result.rows})
    result.files = {k: str(out_dir / f"evaluation.{k}") for k in ("csv", "md", "json")}
    return result.files


def record_evaluation(run_dir: str | Path, metrics: dict[str, float], key: str = "evaluation") -> Path:
    """Add ``metrics`` as ``key`` to ``RUN_DIR/metrics.json`` (atomically rewritten)."""
    path = Path(run_dir) / "metrics.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[key] = metrics
    atomic_write_json(path, data)
    return path


def model_metrics(result: EvalResult) -> dict[str, float]:
    """The model's overall metrics (for metrics.json and the registry)."""
    if "model" not in result.overall:
        raise ValueError("the evaluation did not score a model")
    return {**result.overall["model"], "n_pairs": result.n_pairs, "split": result.split}
