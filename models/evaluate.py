"""Evaluation harness: the model and classical baselines on the test split's FIXED pairings.

For every (method, mask kind, hole-ratio bin) it reports the mean over pairs of hole_psnr,
hole_ssim, hole_l1, comp_psnr, comp_ssim, comp_l1 (definitions and SSIM window in
:mod:`models.metrics`) and, for the model, G1's edge precision / recall / F1 inside the hole
(micro-averaged counts). Rows with kind ``all`` / bin ``all`` aggregate every pair of a method.
Pairs are scored un-augmented (``aug`` ignored), in the pairing table's order;
``pairs_per_bin`` keeps the first k rows of every (kind, bin) cell for quick runs.

Outputs (``write_report``): ``evaluation.csv``, ``evaluation.md`` (markdown table) and
``evaluation.json`` (rows + the model's overall metrics, e.g. the primary ``hole_psnr``).
"""
from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from models.baselines import BASELINES, run_baseline
from models.checkpoint import load_inference_bundle
from models.metrics import EdgeCounts, image_metrics
from models.networks import edge_connect_forward
from pipeline.atomic_io import atomic_write_bytes, atomic_write_json
from pipeline.dataset import InpaintingDataset
from pipeline.masks import RATIO_BINS, ratio_bin

IMAGE_METRICS = ("hole_psnr", "hole_ssim", "hole_l1", "comp_psnr", "comp_ssim", "comp_l1")
EDGE_METRICS = ("edge_precision", "edge_recall", "edge_f1")


@dataclass
class EvalResult:
    rows: list[dict]
    overall: dict[str, dict[str, float]]  # method -> metrics over all pairs
    n_pairs: int
    model: str | None
    files: dict[str, str] = field(default_factory=dict)


def _bin_label(ratio: float) -> str:
    b = int(ratio_bin(ratio)[0])
    if b < 0:
        return "other"
    lo, hi = RATIO_BINS[b]
    return f"{int(round(lo * 100))}-{int(round(hi * 100))}%"


def select_pairs(ds: InpaintingDataset, pairs_per_bin: int | None) -> list[int]:
    """Indices of test pairings to score: all, or the first ``pairs_per_bin`` of every cell."""
    if pairs_per_bin is None:
        return list(range(len(ds)))
    seen: dict[tuple[str, str], int] = defaultdict(int)
    keep = []
    for i, (_, m, _) in enumerate(ds.pairings[:, :3]):
        key = (str(ds.mask_kind[m]), _bin_label(float(ds.mask_ratio[m])))
        if seen[key] < pairs_per_bin:
            seen[key] += 1
            keep.append(i)
    return keep


def _model_outputs(bundle, image, edges, mask, device) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        im, ed, ma = (t.to(device) for t in (image, edges, mask))
        out, gen = edge_connect_forward(bundle.edge_generator, bundle.inpaint_generator, im, ed, ma)
    return out.float().cpu().numpy(), gen.float().cpu().numpy()


def evaluate(store: str | Path, model: str | Path | None = None, *, methods: tuple[str, ...] | None = None,
             pairs_per_bin: int | None = None, batch_size: int = 8, device: str = "cpu") -> EvalResult:
    """Score ``model`` (run dir or registry name; None = baselines only) and ``methods``."""
    ds = InpaintingDataset(store, "test", augment=False)
    if len(ds) == 0:
        raise ValueError(f"store {store} has no test pairings to evaluate on")
    methods = tuple(methods) if methods is not None else ((("model",) if model is not None else ()) + BASELINES)
    if "model" in methods and model is None:
        raise ValueError("method 'model' needs --model RUN_DIR_OR_NAME")
    bundle = load_inference_bundle(model, device) if "model" in methods else None
    keep = select_pairs(ds, pairs_per_bin)
    sums: dict[tuple[str, str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    edges_acc: dict[tuple[str, str, str], EdgeCounts] = defaultdict(EdgeCounts)
    for start in range(0, len(keep), batch_size):
        items = [ds[i] for i in keep[start:start + batch_size]]
        image = torch.stack([it["image"] for it in items])
        edges = torch.stack([it["edges"] for it in items])
        mask = torch.stack([it["mask"] for it in items])
        model_out = _model_outputs(bundle, image, edges, mask, device) if bundle is not None else None
        for j, it in enumerate(items):
            truth, m = image[j].numpy(), mask[j, 0].numpy().astype(bool)
            cells = [(it["mask_kind"], _bin_label(it["hole_ratio"])), (it["mask_kind"], "all"), ("all", "all")]
            for method in methods:
                if method == "model":
                    out = model_out[0][j]
                    counts = EdgeCounts.of(model_out[1][j, 0], edges[j, 0].numpy(), m)
                else:
                    out, counts = run_baseline(method, truth * (1 - m), m), None
                scores = image_metrics(out, truth, m)
                for kind, b in cells:
                    for k, v in scores.items():
                        sums[(method, kind, b)][k].append(v)
                    if counts is not None:
                        edges_acc[(method, kind, b)] = edges_acc[(method, kind, b)] + counts
    rows = []
    for (method, kind, b), vals in sorted(sums.items(), key=lambda kv: (kv[0][0], kv[0][1] == "all", kv[0][1], kv[0][2] == "all", kv[0][2])):
        row = {"method": method, "mask_kind": kind, "ratio_bin": b, "n": len(vals["hole_l1"])}
        row.update({k: float(np.nanmean(vals[k])) for k in IMAGE_METRICS})
        if (method, kind, b) in edges_acc:
            row.update(edges_acc[(method, kind, b)].scores())
        rows.append(row)
    overall = {r["method"]: {k: v for k, v in r.items() if k not in ("method", "mask_kind", "ratio_bin")}
               for r in rows if r["mask_kind"] == "all"}
    return EvalResult(rows=rows, overall=overall, n_pairs=len(keep), model=None if model is None else str(model))


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if np.isnan(v) else f"{v:.4f}"
    return str(v)


def markdown_table(rows: list[dict]) -> str:
    cols = ["method", "mask_kind", "ratio_bin", "n", *IMAGE_METRICS, *EDGE_METRICS]
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
    header = (f"# Evaluation: {result.model or 'baselines'} on {result.n_pairs} fixed test pairs\n\n"
              "PSNR dB (data range 1), SSIM (Gaussian window sigma 1.5, data range 1), L1; hole = inside the "
              "mask, comp = whole composite image; edge P/R/F1 of G1 inside the hole (threshold 0.5).\n\n")
    atomic_write_bytes(out_dir / "evaluation.md", (header + markdown_table(result.rows)).encode())
    atomic_write_json(out_dir / "evaluation.json", {"model": result.model, "n_pairs": result.n_pairs,
                                                    "overall": result.overall, "rows": result.rows})
    result.files = {k: str(out_dir / f"evaluation.{k}") for k in ("csv", "md", "json")}
    return result.files


def record_evaluation(run_dir: str | Path, metrics: dict[str, float]) -> Path:
    """Add ``metrics`` as ``"evaluation"`` to ``RUN_DIR/metrics.json`` (atomically rewritten)."""
    path = Path(run_dir) / "metrics.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data["evaluation"] = metrics
    atomic_write_json(path, data)
    return path


def model_metrics(result: EvalResult) -> dict[str, float]:
    """The model's overall metrics (for metrics.json and the registry)."""
    if "model" not in result.overall:
        raise ValueError("the evaluation did not score a model")
    return {**result.overall["model"], "n_pairs": result.n_pairs}
