"""Run outputs for people: step history (JSON lines), TensorBoard scalars, sample grids, loss plots.

``RUN_DIR/history.jsonl``: one JSON object per logged step (``step``, ``stage`` and every loss
scalar). On resume the lines after the checkpoint's step are dropped first, so the file always
describes one consistent run.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from pipeline.atomic_io import atomic_path, atomic_write_text
from pipeline.pictures import picture_markdown


class RunLog:
    """Rank 0's writer of history.jsonl and TensorBoard scalars (``RUN_DIR/tb``)."""

    def __init__(self, run_dir: Path, resume_step: int = 0, tensorboard: bool = True):
        self.path = Path(run_dir) / "history.jsonl"
        if self.path.exists():
            keep = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= resume_step]
            atomic_write_text(self.path, "".join(k + "\n" for k in keep))
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=resume_step + 1 if resume_step else None)

    def log(self, step: int, scalars: dict[str, float], **extra) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **extra, **scalars}) + "\n")
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_history(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "history.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []


def _rgb(x: torch.Tensor) -> np.ndarray:
    x = x.detach().float().cpu().clamp(0, 1)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def save_sample_grid(path: Path, image, edges, mask, gen_edges, output) -> Path:
    """PNG, one row per sample: masked input | masked edges | completed edges | output | truth.

    Holes are drawn white in the masked input (mask 1 = missing)."""
    from PIL import Image

    rows = []
    for i in range(image.shape[0]):
        m = mask[i]
        masked = image[i] * (1 - m) + m
        comp_edges = edges[i] * (1 - m) + gen_edges[i] * m
        comp_out = image[i] * (1 - m) + output[i] * m
        tiles = [masked, 1 - edges[i] * (1 - m), 1 - comp_edges, comp_out, image[i]]
        rows.append(np.concatenate([_rgb(t) for t in tiles], axis=1))
    with atomic_path(path) as tmp:
        Image.fromarray(np.concatenate(rows, axis=0)).save(tmp, format="PNG")
    return path


def save_loss_plot(run_dir: Path, path: Path | None = None) -> Path | None:
    """Plot every generator/discriminator loss of history.jsonl and the validation curves
    (hole PSNR in dB, edge MAPE; logged every ``schedule.mape_every`` steps) against the step (PNG).
    A step logged twice (a run resumed from an earlier checkpoint) keeps its last record."""
    history = list({h["step"]: h for h in read_history(run_dir) if "step" in h}.values())
    if not history:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ("g1", "d1", "g2", "d2", "hole_l1", "edge_mape", "val_hole_psnr", "val_edge_mape")
    keys = [k for k in names if any(k in h for h in history)]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8), squeeze=False)
    for ax, k in zip(axes[0], keys):
        points = sorted((h["step"], h[k]) for h in history if k in h)
        ax.plot([s for s, _ in points], [v for _, v in points], marker="." if k.startswith("val_") else None)
        ax.set_title(k)
        ax.set_xlabel("step")
    fig.tight_layout()
    path = path or Path(run_dir) / "samples" / "losses.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return path


def training_summary_markdown(summary: dict, metrics: dict, title: str) -> str:
    """Markdown for a finished run: steps, G1 loss stage, held-out hole L1, speed, primary metric,
    warnings and the last two pictures, the last sample grid and the loss plot
    (:func:`pipeline.pictures.picture_markdown`; ``summary`` = ``asdict(TrainSummary)``)."""
    from models.registry import PRIMARY_METRIC

    images = [s for s in summary.get("samples", []) if s.endswith(".png")]
    md = [f"## {title}: `{summary['run_dir']}`", "", "| | |", "|---|---|",
          f"| steps / epochs | {summary['steps']} / {summary['epochs']} |",
          f"| G1 loss stage | {summary['stage']} (switch at step {summary['stage_switch_step']}) |",
          f"| validation hole L1 start -> end | {summary['held_out_start'].get('hole_l1', float('nan')):.4f} -> "
          f"{summary['held_out_end'].get('hole_l1', float('nan')):.4f} |",
          f"| images/s | {summary['images_per_s']:.2f} on {summary['device']} x {summary['world_size']} |",
          f"| {PRIMARY_METRIC} (validation pairings, deployment path) | {metrics[PRIMARY_METRIC]:.3f} dB |"]
    md += [f"| warning | {w} |" for w in summary.get("warnings", [])]
    md += [""] + [picture_markdown(p, Path(p).name) for p in images[-2:]]
    return "\n".join(md)


def overall_rows(rows: list[dict]) -> list[dict]:
    """The evaluation rows over all hole-ratio bins, floats rounded to 4 places (for a table)."""
    return [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
            for r in rows if r["ratio_bin"] == "all"]


def retrain_markdown(base: str | None, steps: int, store: str, candidate: str, promoted: bool,
                     current: str | None, reason: str) -> str:
    """Markdown for the ``retrain-model`` artifact: what was fine-tuned on what, and the promotion decision."""
    return (f"## retrain-model\n\nbase `{base}` fine-tuned {steps} steps on `{store}` -> `{candidate}`\n\n"
            f"**{'PROMOTED' if promoted else 'KEPT ' + str(current)}**: {reason}\n")
