"""Shipping a trained model with edgefill: slim half-precision weights, index entry, model card.

A shipped model is a slim run dir under ``models/weights/<name>/`` (read-only, see
:mod:`models.registry`): ``config.json`` (as written by training: architecture, radiometry,
edge parameters), ``checkpoints/last.pt`` holding only G1 and G2, stored in float16 when
``half`` (loaded back into float32 networks; the card reports both precisions' scores) and
``MODEL_CARD.md``. ``models/weights/index.json`` lists it; ``default`` names the model that
``current`` resolves to while the user's registry has none.

Use :func:`ship_model` from a finished run (the ``step``: which checkpoint, e.g. the best
validation one) and :func:`card_tables` to turn evaluations into the card's tables. The card's
training facts (:func:`training_facts`), its reproduce commands (:func:`reproduce_commands`) and
its limits (:func:`training_limits`) are read from the run's own records: ``config.json``,
``history.jsonl`` (per logged step: losses, validation scores, ``seconds`` of training so far),
``metrics.json`` (the training summary: machine, steps, validation at the start and the end) and
the store's metadata, so ``scripts/ship_model.py RUN_DIR`` alone writes the card.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.checkpoint import (CHECKPOINT_FORMAT, CheckpointError, atomic_torch_save, inference_weights, load_checkpoint,
                               read_run_config, run_model_config)
from models.evaluate import IMAGE_METRICS, by_bin, markdown_table, summarise
from models.registry import SHIPPED_DIR
from pipeline.atomic_io import atomic_write_json, atomic_write_text

CARD = "MODEL_CARD.md"
CURVES = "learning_curves.png"


def slim_weights(ckpt: dict[str, Any], half: bool) -> dict[str, Any]:
    """G1 and G2 state dicts only (floating tensors in float16 when ``half``)."""
    def conv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: (v.half() if half and v.is_floating_point() else v).contiguous() for k, v in state.items()}

    return {"format": CHECKPOINT_FORMAT, "architecture_hash": ckpt["architecture_hash"], "step": int(ckpt["step"]),
            "epoch": int(ckpt.get("epoch", 0)), "stage": int(ckpt.get("stage", 1)),
            "models": {k: conv(inference_weights(ckpt)[k]) for k in ("g1", "g2")}}


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


# ----------------------------------------------------------------------------- the run's own records

def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s"


def _machine(machine: dict[str, Any]) -> str:
    if not machine:
        return "not recorded by this run"
    text = (f"{machine.get('cpu_cores')}-core {machine.get('cpu')} CPU, torch threads {machine.get('torch_threads')}"
            f" per process")
    if machine.get("device") == "cuda":
        text += f", GPU {machine.get('gpu')}"
    else:
        text += ", no GPU"
    return text + f", {machine.get('processes', 1)} process(es), torch {machine.get('torch')}"


@dataclass
class RunRecords:
    """What a finished run recorded about itself (``config.json``, ``history.jsonl``, ``metrics.json``)
    and the step of the checkpoint being shipped."""

    run_dir: Path
    meta: dict[str, Any]
    history: list[dict]
    training: dict[str, Any]
    checkpoint: str
    step: int
    best: dict[str, Any]

    @classmethod
    def read(cls, run_dir: str | Path, checkpoint: str = "best.pt") -> "RunRecords":
        from models.reporting import read_history

        run_dir = Path(run_dir)
        meta = read_run_config(run_dir)
        metrics_path = run_dir / "metrics.json"
        training = json.loads(metrics_path.read_text()).get("training") if metrics_path.is_file() else None
        if not training:
            raise CheckpointError(f"{run_dir} has no training summary (metrics.json 'training'): not a finished run")
        ckpt = load_checkpoint(run_dir / "checkpoints" / checkpoint)
        return cls(run_dir, meta, read_history(run_dir), training, checkpoint, int(ckpt["step"]),
                   dict(ckpt.get("best") or {}))

    def at_step(self, key: str) -> float | None:
        """``key`` as logged at the shipped step (None if it was not logged there)."""
        values = [h[key] for h in self.history if h.get("step") == self.step and key in h]
        return float(values[-1]) if values else None

    def validation_after(self) -> float | None:
        """Validation hole PSNR of the shipped weights, as training measured it."""
        value = self.at_step("val_hole_psnr")
        if value is None and self.best.get("step") == self.step:
            value = self.best.get("value")
        if value is None and self.step == int(self.training["steps"]):
            value = self.training.get("held_out_end", {}).get("hole_psnr")
        return value

    def seconds_at_step(self) -> float | None:
        value = self.at_step("seconds")
        if value is None and self.step == int(self.training["steps"]):
            value = self.training.get("train_seconds")
        return value


def training_facts(rec: RunRecords) -> dict[str, str]:
    """The card's training facts, from the run's records: machine, steps, wall time, selection,
    validation before and after."""
    cfg = run_model_config(rec.meta)
    t, sch = cfg.train, cfg.schedule
    tr = rec.training
    crop = t.crop_size or rec.meta["patch_size"]
    facts = {"machine": _machine(tr.get("machine") or {}),
             "steps": (f"shipped checkpoint `{rec.checkpoint}` at step {rec.step}; trained to step {tr['steps']} of a "
                       f"{t.lr_schedule} schedule to {t.max_steps} (batch {t.batch_size}, random {crop} px crops, "
                       f"fresh mask and augmentation per sample)")}
    seconds, total = rec.seconds_at_step(), tr.get("train_seconds")
    if seconds is not None and rec.step > 0:
        facts["wall_time"] = f"{_duration(seconds)} to step {rec.step} ({seconds / rec.step:.2f} s/step)"
        if total and int(tr["steps"]) != rec.step:
            facts["wall_time"] += f"; {_duration(total)} for all {tr['steps']} steps"
    if rec.checkpoint == "best.pt":
        facts["selection"] = (f"checkpoints/best.pt = highest validation hole PSNR ({sch.mape_patches} fixed validation "
                              f"pairs, every {sch.mape_every} steps"
                              + (f", weights averaged with decay {t.ema_decay:g}" if t.ema_decay > 0 else "") + ")")
    else:
        facts["selection"] = f"checkpoints/{rec.checkpoint} (step {rec.step})"
    before = (tr.get("held_out_start") or {}).get("hole_psnr")
    after = rec.validation_after()
    if before is not None and after is not None:
        facts["validation"] = (f"hole PSNR {before:.3f} dB at step 0 -> {after:.3f} dB at step {rec.step} "
                               f"(the {sch.mape_patches} validation pairs training measures)")
    return facts


def _shown_path(path: str | Path) -> str:
    from models.registry import SHIPPED_DIR as shipped

    root = Path(shipped).resolve().parent.parent
    path = Path(path)
    try:
        return str(path.resolve().relative_to(root))
    except ValueError:
        return str(path)


def _sets(values: dict[str, Any], defaults: dict[str, Any], prefix: str = "") -> list[str]:
    """``--set key=value`` for every leaf of ``values`` that differs from ``defaults``."""
    out = []
    for key, value in values.items():
        default = defaults.get(key, object())
        if isinstance(value, dict) and isinstance(default, dict):
            out += _sets(value, default, f"{prefix}{key}.")
        elif value != default:
            out.append(f"--set {prefix}{key}={json.dumps(value, separators=(',', ':'))}")
    return out


def _export_command(store: str, export_config: dict[str, Any], source: str) -> str:
    from pipeline.export_config import SR_COLLECTION, ExportConfig

    values = dict(export_config)
    if source == "earthengine":
        values["product"] = "sr" if values.pop("collection", "") == SR_COLLECTION else "toa"
        for derived in ("bands", "aois", "block"):
            values.pop(derived, None)
    fields = set(ExportConfig.model_fields)
    if source not in ("local", "earthengine") or not set(values) <= fields:
        return f"# {store}: written by '{source}', not by edgefill export (its export config: {json.dumps(export_config)})"
    defaults = ExportConfig(source=source).model_dump(mode="json")
    if values.get("count") == (60000 if source == "earthengine" else None):
        values.pop("count", None)
    return " ".join(["edgefill export", *_sets(values, defaults), "--out", store])


def _prepare_command(store: str, prepare_config: dict[str, Any] | None) -> str:
    from pipeline.prepare import PrepareDatasetConfig

    if not prepare_config:
        return f"edgefill prepare {store}"
    default = PrepareDatasetConfig().prepare_config().model_dump(mode="json")
    values = dict(prepare_config)
    seed = (values.get("masks") or {}).get("seed", 0)
    for section in ("masks", "pairings"):  # the one seed, set at the top
        for d in (values, default):
            if isinstance(d.get(section), dict):
                d[section] = {k: v for k, v in d[section].items() if k != "seed"}
    seeds = [f"--set seed={seed}"] if seed else []
    return " ".join([f"edgefill prepare {store}", *seeds, *_sets(values, default)])


def reproduce_commands(rec: RunRecords, name: str, store: str | Path | None = None, dest: Path | None = None,
                       ship_options: list[str] | None = None) -> list[str]:
    """The commands that rebuild the store, retrain the run and ship it: from the store's metadata
    (its export and prepare configs) and the run's config.json (shipped beside the weights, in
    ``dest``); ``ship_options``: the ship script's other options that shape the card."""
    from pipeline.store import open_store, read_meta

    store = Path(store or rec.meta["store"])
    shown = _shown_path(store)
    meta = read_meta(open_store(store))
    prepare = meta.prepare.config
    machine = rec.training.get("machine") or {}
    threads = machine.get("torch_threads")
    world = int(rec.training.get("world_size", 1))
    run = _shown_path(rec.run_dir)
    trainer = (f"torchrun --standalone --nproc-per-node={world} -m models.train" if world > 1
               else "python -m models.train")
    return ["bash scripts/setup_venv.sh && source .venv/bin/activate",
            _export_command(shown, meta.export_config, meta.source),
            _prepare_command(shown, prepare),
            (f"OMP_NUM_THREADS={threads} " if threads else "")
            + f"{trainer} {shown} --set model={_shown_path(Path(dest or SHIPPED_DIR) / name / 'config.json')} "
              f"--out {run}"
              "   # resumable: rerun the same line after an interruption",
            f"python scripts/ship_model.py {run}"
            + ("" if store.resolve() == Path(rec.meta["store"]).resolve() else f" {shown}")
            + f" --name {name} --checkpoint {rec.checkpoint}" + "".join(f" {o}" for o in ship_options or [])]


def training_limits(rec: RunRecords, val_records: list[dict]) -> list[str]:
    """The card's limits, from what the run recorded (its machine and time, edge MAPE, losses that
    were off, radiometry, tile size) and the validation margins."""
    cfg = run_model_config(rec.meta)
    machine = rec.training.get("machine") or {}
    seconds = rec.seconds_at_step()
    over_prefill = margins_over(val_records, baseline="harmonic").get("all")
    gpu = machine.get("device") == "cuda"
    line = (f"Trained {_duration(seconds) + ' ' if seconds else ''}on "
            f"{'a GPU' if gpu else 'CPU cores only'} ({_machine(machine)}).")
    mape = rec.at_step("val_edge_mape")
    if mape is not None:
        line += f" G1's validation edge MAPE at the shipped step: {mape:.2f} (errors per true edge pixel)."
    if over_prefill is not None:
        line += f" Learning adds {over_prefill:+.2f} dB of validation hole PSNR over the harmonic prefill G2 starts from."
    if not gpu:
        line += " The `full` preset on a GPU is the way to a stronger model."
    limits = [line]
    losses = cfg.losses
    if losses.perceptual_weight == 0 and losses.style_weight == 0:
        limits.append("Perceptual and style losses are off (weights 0 in the config).")
    vgg = [w for w in rec.meta.get("warnings", []) if "VGG19" in w]
    if vgg and (losses.perceptual_weight or losses.style_weight):
        limits.append(f"Perceptual and style losses were off in training: {vgg[0]}")
    rad = rec.meta["radiometry"]
    limits.append(f"Trained on {rad['description']} ({rad['dtype']}); scenes of another dtype are stretched per scene "
                  f"at inference. Only the three visible bands (R, G, B) are filled by the model.")
    limits.append(f"Holes wider than a tile ({rec.meta['patch_size']} px) get little context.")
    return limits


def model_card(name: str, run_dir: str | Path, store: str | Path, *, val_records: list[dict], test_records: list[dict],
               val_fp32_psnr: float, training: dict[str, Any], commands: list[str], notes: list[str],
               dest: Path | None = None) -> str:
    """The card beside the weights: what the model is, its data, how it was trained and selected,
    its validation and test tables beside the classical fills, and the commands that reproduce it."""
    meta = read_run_config(Path(run_dir))
    cfg = run_model_config(meta)
    from models.networks import build_networks, count_parameters

    nets = build_networks(cfg)
    n_params = count_parameters(nets["g1"]) + count_parameters(nets["g2"])
    val_m, test_m = margins_over(val_records), margins_over(test_records)
    val_h, test_h = margins_over(val_records, baseline="harmonic"), margins_over(test_records, baseline="harmonic")
    val_fp16 = {r["method"]: r["hole_psnr"] for r in summarise(val_records) if r["mask_kind"] == "all"}["model"]

    def margin_line(m: dict[str, float]) -> str:
        bins = {k: v for k, v in m.items() if k != "all"}
        return ", ".join(f"{k} {v:+.2f}" for k, v in bins.items()) + f"; mean over bins {sum(bins.values()) / len(bins):+.2f} dB"

    t, L = cfg.train, cfg.losses
    folder = Path(dest or SHIPPED_DIR) / name
    weights, curves = folder / "checkpoints" / "last.pt", folder / CURVES
    size = f"{weights.stat().st_size / 2 ** 20:.1f}" if weights.exists() else "?"
    lines = [
        f"# Model card: `{name}`", "",
        "The default model of edgefill: what `edgefill inpaint IN.tif OUT.tif` uses when no `--model` is given "
        "(and what `current` means until you promote a model of your own).", "",
        "## What it is",
        f"- EdgeConnect (arXiv 1901.00212) adapted as in the project's method: **G1** completes Canny edges from the "
        f"mask and the known edges only (no grayscale); **G2** fills RGB conditioned on the completed edges, starting "
        f"from a harmonic prefill of the hole and predicting a residual in units of each tile's known-pixel standard "
        f"deviation (`g2_residual_fill`, `g2_normalise`): known pixels are never changed, and a tile's gain and offset "
        f"(8-bit DN, TOA or SR reflectance) do not matter to the learned part.",
        f"- Preset `{cfg.name}`: base {cfg.base_channels} channels, {cfg.residual_blocks} residual blocks, "
        f"D {cfg.disc_channels}; G1 + G2 = {n_params:,} parameters, stored in float16 ({size} MiB).",
        f"- Inputs: RGB = Landsat B3, B2, B1 (Landsat 8: B4, B3, B2); radiometry `{meta['radiometry']['description']}`; "
        f"scenes of another dtype are stretched per scene (p0.5 / p99.5 -> 1/255 .. 1) as `edgefill inpaint` does. "
        f"Canny: sigma {meta['edge_params']['sigma']}, thresholds {meta['edge_params']['low_threshold']} / "
        f"{meta['edge_params']['high_threshold']}. Tiles of {meta['patch_size']} px.",
        "", "## Data",
        "Real Landsat only (provenance and licences: `data_catalog/scenes/SOURCES.md`, `data_catalog/ATTRIBUTION.md`); "
        "split by scene / place, Everest never trained on (test). Masks: the project's library, split the same way "
        "(procedural QD-IMD-style strokes, an SLC-off generator fitted to real gaps, crops of real SLC-off gap masks, "
        "real QA clouds, real nodata, real QD-IMD); training draws a fresh mask, augmentation and crop per sample.", "",
        store_data_table(store), "",
        "## Training",
        f"- Mode `{t.mode}`, {t.batch_size} x {t.crop_size or meta['patch_size']} px crops per step, Adam "
        f"betas {tuple(t.betas)}, lr G {t.lr_g:g} / D {t.lr_d:g}, {t.lr_schedule} schedule; G1: the method's two-stage "
        f"adversarial + feature-matching + SSIM losses (stage switch: validation edge MAPE < {cfg.schedule.mape_threshold} "
        f"or epoch {cfg.schedule.max_stage1_epochs}); G2: {L.inpaint_objective} reconstruction"
        f"{' (scaled by the known-pixel std)' if L.inpaint_l1_scaled and L.inpaint_objective == 'l1' else ''}, "
        f"adversarial weight {L.inpaint_adv_weight:g}, perceptual {L.perceptual_weight:g}, style {L.style_weight:g}.",
        *[f"- {k}: {v}" for k, v in training.items()],
        *([f"- Learning curves (losses; validation hole PSNR and edge MAPE): [{CURVES}]({CURVES})"]
          if curves.exists() else []),
        "", "## Evaluation (deployment path)",
        "Scores come from the same tiled fill `edgefill inpaint` runs (known edges of the masked tile, G1, G2, "
        "blending, composite written in the stored dtype) on FIXED pairs of held-out scenes and held-out masks. "
        "Hole PSNR / SSIM / L1 on the hole pixels (data range 1), composite SSIM on the whole patch; GDAL FillNodata "
        "(rasterio.fill.fillnodata, search distance = the patch diagonal), OpenCV Telea and Navier-Stokes (radius 3) "
        "and the harmonic prefill alone (`harmonic`, what G2 starts from) on the same pairs.", "",
        f"**Hole-PSNR margin over GDAL FillNodata** (dB) - validation: {margin_line(val_m)}; "
        f"**test: {margin_line(test_m)}**.", "",
        f"Over its own prefill (learning's share) - validation: {margin_line(val_h)}; test: {margin_line(test_h)}.", "",
        f"Half precision: validation hole PSNR {val_fp16:.3f} dB with the shipped float16 weights, {val_fp32_psnr:.3f} dB "
        f"with the float32 checkpoint.", "",
        "### Validation split (model selection read only this)", "", card_tables(val_records), "",
        "### Test split (never used for a decision)", "", card_tables(test_records), "",
        "## Reproduce", "", "```bash", *commands, "```", "",
        "## Limits", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(lines)
