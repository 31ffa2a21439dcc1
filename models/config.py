"""Pydantic configuration of the models stage: architecture, losses, stage schedule, training.

One :class:`ModelConfig` describes a run completely; it is written to ``RUN_DIR/config.json``
and read back by :mod:`models.checkpoint`. Presets: :meth:`ModelConfig.full` (EdgeConnect
sizes, the GPU default), :meth:`ModelConfig.tiny` (16 base channels, 2 residual blocks, CPU
tests) and :meth:`ModelConfig.demo` (tiny, joint mode, a few minutes on 2 CPU cores; its G2
starts at a harmonic smooth fill and learns a residual, ``g2_residual_fill``).

The models stage's run configs live here too, each the one declaration of its parameters and
defaults (the CLI generates its flags from them, the flows take them as their ``config``
parameter): :class:`TrainRunConfig` (``edgefill train``, ``python -m models.train`` / torchrun,
the ``train-model`` flow), :class:`EvaluateConfig` (``edgefill evaluate``) and
:class:`RetrainConfig` (the ``retrain-model`` flow). Light on purpose (no torch import): the CLI
imports it to build its options.

Conventions: mask 1 = missing; edges 1 = edge; images float32 NCHW in [0, 1].
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

TrainMode = Literal["edge", "inpaint", "joint"]
GanObjective = Literal["bce", "l1", "l2"]


class LossConfig(BaseModel):
    """Loss weights and objectives (seed method for G1, EdgeConnect for G2).

    G1 stage 1: ``edge_adv_stage1`` objective over the whole edge map, feature matching with
    the L1 norm; stage 2: ``edge_adv_stage2`` objective on ``edge * mask`` only, feature
    matching with the L2 norm. Structural loss is ``1 - SSIM(raw * M, gen * M)``
    (Gaussian window ``ssim_window`` px, sigma 1.5, data range 1). G2: L1 normalised by the
    hole fraction, adversarial, perceptual and style (VGG19 features, off without weights).
    """

    model_config = ConfigDict(extra="forbid")
    edge_adv_weight: float = 1.0
    edge_fm_weight: float = 20.0
    edge_structure_weight: float = 5.0
    edge_adv_stage1: GanObjective = "l1"
    edge_adv_stage2: GanObjective = "l2"
    ssim_window: int = 11
    inpaint_l1_weight: float = 1.0
    inpaint_objective: Literal["l1", "log_mse"] = Field("l1", description="G2's reconstruction term: EdgeConnect's "
                                                         "hole-normalised L1, or the per-sample log hole MSE (= -mean hole PSNR)")
    inpaint_l1_scaled: bool = Field(False, description="divide G2's L1 by each tile's known-pixel std per band "
                                    "(g2_normalise units), so every tile weighs alike")
    inpaint_adv_weight: float = 0.1
    inpaint_adv: GanObjective = "bce"
    perceptual_weight: float = 0.1
    style_weight: float = 250.0


class StageSchedule(BaseModel):
    """G1 switches from stage 1 to stage 2 when the VALIDATION edge MAPE (2 px tolerant, see
    :func:`models.losses.edge_mape`) drops below ``mape_threshold`` or when ``max_stage1_epochs``
    epochs (passes over the training images) have run, whichever comes first; either criterion
    can be disabled (threshold 0, or a huge epoch count). The MAPE is checked every ``mape_every``
    steps on ``mape_patches`` validation pairs through the deployment fill path; the decision is
    taken on rank 0 and broadcast."""

    model_config = ConfigDict(extra="forbid")
    mape_threshold: float = 0.1
    max_stage1_epochs: int = 100
    mape_every: int = 500
    mape_patches: int = 8


class TrainConfig(BaseModel):
    """Optimisation and bookkeeping. Steps count generator updates (one batch each)."""

    model_config = ConfigDict(extra="forbid")
    mode: TrainMode = "joint"
    batch_size: int = Field(8, ge=1)
    crop_size: int | None = Field(None, description="random square crop (px, multiple of 4) of each patch; None = whole patch")
    max_steps: int = Field(200_000, ge=0)
    lr_g: float = 1e-4
    lr_d: float = 1e-5
    betas: tuple[float, float] = (0.0, 0.9)
    lr_schedule: Literal["constant", "cosine"] = Field("constant", description="learning-rate decay over max_steps")
    lr_min_factor: float = Field(0.1, gt=0, le=1, description="cosine: final lr = lr x this factor")
    checkpoint_every: int = Field(1000, ge=1)
    ema_decay: float = Field(0.0, ge=0.0, lt=1.0, description="exponential moving average of G1/G2 weights per step "
                             "(0 = off); validation, samples and best.pt use the averaged weights")
    keep_best: bool = Field(True, description="keep checkpoints/best.pt: the step with the best validation hole PSNR "
                            "(measured every schedule.mape_every steps)")
    log_every: int = Field(50, ge=1)
    sample_every: int = Field(1000, ge=1)
    seed: int = 0
    num_workers: int = 0
    deterministic: bool = False
    amp_bf16: bool = True
    channels_last: bool = True
    compile: bool = False
    compile_backend: str = Field("inductor", description="torch.compile backend (the CPU dry run of the GPU check uses 'eager')")
    vgg19_weights: Path | None = Field(None, description="torchvision VGG19 ImageNet state dict (.pth); env EDGEFILL_VGG19_WEIGHTS")

    def resolved_vgg19_weights(self) -> Path | None:
        if self.vgg19_weights is not None:
            return Path(self.vgg19_weights)
        env = os.environ.get("EDGEFILL_VGG19_WEIGHTS")
        return Path(env) if env else None


class ModelConfig(BaseModel):
    """Architecture (EdgeConnect, configurable width/depth) plus losses, schedule and training.

    ``base_channels`` is the first conv's width (64 in EdgeConnect); the encoder doubles it
    twice; ``residual_blocks`` (8) run at 4 x base with dilation 2 in their first conv.
    ``disc_channels`` is D's first width (64 -> 128 -> 256 -> 512 -> 1).
    """

    model_config = ConfigDict(extra="forbid")
    name: str = "full"
    base_channels: int = Field(64, ge=1)
    residual_blocks: int = Field(8, ge=0)
    disc_channels: int = Field(64, ge=1)
    edge_spectral_norm: bool = True
    g2_residual_fill: bool = Field(False, description="G2 = harmonic smooth fill + learned residual "
                                   "(zero-initialised; mask as 5th input)")
    g2_normalise: bool = Field(False, description="(with g2_residual_fill) G2 sees the tile standardised by its known "
                               "pixels' per-band mean/std and predicts the residual in those units")
    losses: LossConfig = LossConfig()
    schedule: StageSchedule = StageSchedule()
    train: TrainConfig = TrainConfig()

    def architecture(self) -> dict:
        """The fields that decide tensor shapes (what a checkpoint must match)."""
        return {"base_channels": self.base_channels, "residual_blocks": self.residual_blocks,
                "disc_channels": self.disc_channels, "edge_spectral_norm": self.edge_spectral_norm,
                "g1_inputs": ["mask", "masked_edges"], "g2_inputs": ["masked_rgb", "edges"], "d1_inputs": ["edges"],
                # only present when on, so existing checkpoints keep their hash
                **({"g2_residual_fill": True, "g2_inputs": ["smooth_filled_rgb", "edges", "mask"]}
                   if self.g2_residual_fill else {}),
                **({"g2_normalise": True} if self.g2_normalise else {})}

    def architecture_hash(self) -> str:
        blob = json.dumps(self.architecture(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @classmethod
    def full(cls, **train) -> "ModelConfig":
        train = {"num_workers": 4, **train}  # DataLoader workers read Zarr while the GPU trains
        return cls(name="full", train=TrainConfig(**train))

    @classmethod
    def tiny(cls, **train) -> "ModelConfig":
        train = {"batch_size": 4, "checkpoint_every": 50, "log_every": 5, "sample_every": 50,
                 "amp_bf16": False, "channels_last": False, **train}
        return cls(name="tiny", base_channels=16, residual_blocks=2, disc_channels=16,
                   schedule=StageSchedule(mape_every=20, mape_patches=4, max_stage1_epochs=100),
                   train=TrainConfig(**train))

    @classmethod
    def demo(cls, **train) -> "ModelConfig":
        """The shipped recipe (:meth:`landsat_cpu`) at the tiny size, 16 x 64 px crops per step:
        ~3-5 minutes for the default 300 steps on 2 CPU cores (the demo shows the pipeline; the
        shipped model is what fills scenes).

        A few hundred CPU steps cannot teach a randomly initialised G2 even to reproduce the known
        image (hole PSNR ~4 dB below GDAL FillNodata), so G2 starts at the harmonic prefill and
        learns a normalised residual (``g2_residual_fill``, ``g2_normalise``); G1 and its losses are
        the method's. 16 x 64 px instead of 4 x 128 px (same pixels per step) lowers the gradient
        noise of such short runs."""
        train = {"mode": "joint", "max_steps": 300, "batch_size": 16, "crop_size": 64, "checkpoint_every": 100,
                 "sample_every": 100, "betas": (0.5, 0.999), "lr_g": 2e-4, "lr_d": 2e-5, **train}
        cfg = cls.tiny(**train)
        losses = cfg.losses.model_copy(update={"inpaint_adv_weight": 0.0, "inpaint_l1_scaled": True})
        return cfg.model_copy(update={"name": "demo", "g2_residual_fill": True, "g2_normalise": True, "losses": losses})

    @classmethod
    def landsat_cpu(cls, **train) -> "ModelConfig":
        """The shipped model's recipe, sized for 2 CPU cores (see models/weights/*/MODEL_CARD.md).

        G1 is the method's (mask + known edges, two-stage adversarial + feature-matching + SSIM
        losses); G2 starts from the harmonic prefill and predicts a residual in units of each
        tile's known-pixel std (``g2_normalise``), trained on hole L1 in those units; G2's
        adversarial weight is 0 and perceptual/style are off (no VGG19 weights offline): on
        low-contrast Landsat they cost hole accuracy (see the card). 32 base channels, 4 residual
        blocks, 8 x 128 px crops per step."""
        train = {"mode": "joint", "max_steps": 20_000, "batch_size": 8, "crop_size": 128, "lr_g": 2e-4, "lr_d": 2e-5,
                 "betas": (0.5, 0.999), "lr_schedule": "cosine", "lr_min_factor": 0.1, "checkpoint_every": 250,
                 "log_every": 25, "sample_every": 1000, "amp_bf16": False, "channels_last": False, "ema_decay": 0.999,
                 **train}
        losses = LossConfig(inpaint_adv_weight=0.0, inpaint_l1_scaled=True, perceptual_weight=0.0, style_weight=0.0)
        return cls(name="landsat-cpu", base_channels=32, residual_blocks=4, disc_channels=32,
                   g2_residual_fill=True, g2_normalise=True, losses=losses,
                   schedule=StageSchedule(mape_every=250, mape_patches=32, max_stage1_epochs=100),
                   train=TrainConfig(**train))

    @classmethod
    def preset(cls, name: str, **train) -> "ModelConfig":
        presets = {"tiny": cls.tiny, "full": cls.full, "demo": cls.demo, "landsat-cpu": cls.landsat_cpu}
        if name not in presets:
            raise ValueError(f"unknown model config preset {name!r}; choose one of {sorted(presets)}")
        return presets[name](**train)


PRESETS = ("tiny", "demo", "landsat-cpu", "full")


def apply_overrides(cfg: ModelConfig, overrides: list[str]) -> ModelConfig:
    """``["schedule.mape_threshold=0.5", "train.mode=edge"]`` -> a new validated config."""
    data = cfg.model_dump(mode="json")
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            if p not in node or not isinstance(node[p], dict):
                raise ValueError(f"override {item!r}: no config section {p!r}")
            node = node[p]
        if parts[-1] not in node:
            raise ValueError(f"override {item!r}: unknown key {parts[-1]!r}; known: {sorted(node)}")
        node[parts[-1]] = value
    return ModelConfig.model_validate(data)


def read_model_config_file(path: str | Path) -> dict:
    """A ModelConfig from a JSON or YAML file (a run's ``config.json`` works: its ``model_config``)."""
    from pipeline.config_io import read_config_file

    data = read_config_file(path)
    return data.get("model_config", data)


def build_config(preset: str | dict | ModelConfig, *, mode: str | None = None, max_steps: int | None = None,
                 batch_size: int | None = None, crop_size: int | None = None, overrides: list[str] | None = None,
                 config_file: Path | None = None) -> ModelConfig:
    """A preset name (or a ModelConfig, its dict, or a ModelConfig JSON/YAML file), then the train
    options that are not None, then ``overrides``."""
    train_kw = {k: v for k, v in dict(mode=mode, max_steps=max_steps, batch_size=batch_size,
                                      crop_size=crop_size).items() if v is not None}
    if config_file is not None:
        preset = read_model_config_file(config_file)
    elif isinstance(preset, str) and preset not in PRESETS:
        if not Path(preset).is_file():
            raise ValueError(f"unknown model config preset {preset!r}; choose one of {list(PRESETS)} "
                             f"or give a ModelConfig JSON/YAML file")
        preset = read_model_config_file(preset)
    if isinstance(preset, str):
        cfg = ModelConfig.preset(preset, **train_kw)
    else:
        base = preset if isinstance(preset, ModelConfig) else ModelConfig.model_validate(preset)
        cfg = base.model_copy(update={"train": base.train.model_copy(update=train_kw)})
        cfg = ModelConfig.model_validate(cfg.model_dump())
    return apply_overrides(cfg, overrides or [])


class TrainRunConfig(BaseModel):
    """One training run: ``edgefill train``, ``python -m models.train`` (torchrun's ranks) and the
    ``train-model`` flow (which then evaluates, registers and maybe promotes it).

    ``model`` picks the ModelConfig; ``mode`` / ``max_steps`` / ``batch_size`` / ``crop_size`` (when
    set) and then ``overrides`` change it (:meth:`resolve`)."""

    model_config = ConfigDict(extra="forbid")
    store: Path = Field(Path("demo_out/landsat.zarr"), description="prepared store (STORE.zarr)")
    out: Path = Field(Path("demo_out/runs/demo"), description="run directory (resumed if it holds a checkpoint)")
    model: str | ModelConfig = Field("demo", description="preset: tiny (CPU tests), demo (tiny, joint, minutes on "
                                     "CPU), landsat-cpu (the shipped recipe), full (GPU); or a ModelConfig JSON/YAML "
                                     "file (a run's config.json works); or a ModelConfig")
    mode: TrainMode | None = Field(None, description="edge | inpaint | joint (default: the preset's)")
    max_steps: int | None = Field(None, ge=0, description="generator steps to train to (default: the preset's)")
    batch_size: int | None = Field(None, ge=1, description="patches per step (default: the preset's)")
    crop_size: int | None = Field(None, description="random square crop, px, multiple of 4 (default: the preset's)")
    overrides: list[str] = Field(default_factory=list, description="model config changes SECTION.KEY=VALUE, "
                                 "e.g. schedule.mape_threshold=0.2, train.compile=true")
    nproc: int = Field(1, ge=1, description="processes (GPUs) on this host, through torchrun")
    resume: bool = Field(True, description="resume OUT if it holds a checkpoint (else start fresh)")
    init_from: str | None = Field(None, description="run dir or registry name whose weights start this run")
    device: str | None = Field(None, description="cpu | cuda | cuda:N (default: the rank's GPU if any, else cpu)")
    progress: bool = Field(True, description="progress bar (rank 0)")

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str | ModelConfig) -> str | ModelConfig:
        if isinstance(v, str) and v not in PRESETS and not Path(v).is_file():
            raise ValueError(f"unknown model config preset {v!r}; choose one of {list(PRESETS)} "
                             f"or give a ModelConfig JSON/YAML file")
        return v

    def resolve(self) -> ModelConfig:
        """The ModelConfig this run trains."""
        return build_config(self.model, mode=self.mode, max_steps=self.max_steps, batch_size=self.batch_size,
                            crop_size=self.crop_size, overrides=self.overrides)


class EvaluateConfig(BaseModel):
    """One evaluation (``edgefill evaluate``; the ``train-model`` / ``retrain-model`` flows' evaluation
    tasks): ``model`` and the classical baselines on the fixed ``split`` pairings of ``store``."""

    model_config = ConfigDict(extra="forbid")
    store: Path = Field(Path("demo_out/landsat.zarr"), description="prepared store whose fixed pairings are scored")
    model: str | None = Field(None, description="run dir or registry name ('current'); none: baselines only")
    out: Path | None = Field(None, description="report folder (default: RUN_DIR/eval, or ./eval for baselines only)")
    pairs_per_bin: int | None = Field(None, ge=1, description="first k pairs of every (kind, bin) cell (default: all)")
    baselines: bool = Field(True, description="also score Telea, Navier-Stokes, GDAL fill, harmonic prefill")
    split: Literal["test", "validation"] = Field("test", description="test (reported) or validation (what "
                                                 "decisions read)")
    device: str = Field("cpu", description="cpu | cuda")


class RetrainConfig(BaseModel):
    """The ``retrain-model`` flow (:func:`models.promotion.retrain`): fine-tune ``base`` on ``store``,
    evaluate it and the base on the same validation pairings, promote only if better."""

    model_config = ConfigDict(extra="forbid")
    store: Path = Field(Path("demo_out/landsat.zarr"), description="prepared store to fine-tune on")
    out_root: Path = Field(Path("demo_out/runs"), description="folder of the new run (retrain-<UTC stamp>)")
    base: str = Field("current", description="model to fine-tune: registry name, 'current' or a run dir")
    max_steps: int = Field(200, ge=1, description="fine-tuning steps")
    overrides: list[str] = Field(default_factory=list, description="model config changes SECTION.KEY=VALUE")
    pairs_per_bin: int | None = Field(2, ge=1, description="evaluation pairs per (kind, bin) cell")
    min_improvement: float = Field(0.0, ge=0.0, description="validation hole PSNR gain (dB) needed to promote")
