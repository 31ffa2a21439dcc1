"""One training step per mode and the state a checkpoint must hold to resume exactly.

Modes (EdgeConnect's models 1-4): ``edge`` trains G1/D1; ``inpaint`` trains G2/D2 on
ground-truth edges; ``joint`` trains G1/D1, then G2/D2 on G1's completed edges (detached):
``known * (1 - M) + G1 * M``, where ``known`` are the deployment edges of the masked sample.
Each GAN step updates D first (on real and on ``generated.detach()`` - D's own output is never
detached, so D learns from fakes), then G against the updated, frozen D.
"""
from __future__ import annotations

import logging
import math
import random
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from models.checkpoint import CheckpointError, load_state, unwrap
from models.config import ModelConfig
from models.losses import (discriminator_loss, edge_mape, edge_mape_exact, feature_matching_loss, gan_loss,
                           hole_log_mse, hole_mean_l1, hole_normalised_l1, perceptual_and_style, structure_loss)
from models.networks import build_networks, known_stats
from models.vgg import VGG19Features

log = logging.getLogger("edgefill.train")


class TrainingDivergedError(RuntimeError):
    """A loss became NaN/inf; training stopped and the last good checkpoint was kept."""


@dataclass
class TrainState:
    """Counters saved in every checkpoint. ``batch`` = next batch index within ``epoch``."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    stage: int = 1
    stage_switch_step: int | None = None
    events: list[str] = field(default_factory=list)
    best_step: int | None = None        # step of the best validation hole PSNR so far (checkpoints/best.pt)
    best_value: float | None = None
    seconds: float = 0.0                # training wall time up to ``step``, over every session (resumes)


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast("cuda", dtype=torch.bfloat16) if enabled and device.type == "cuda" else nullcontext()


class Trainer:
    """Networks, optimisers, optional VGG19 and the per-mode step functions."""

    def __init__(self, cfg: ModelConfig, device: torch.device, *, ddp: bool = False, local_rank: int = 0):
        self.cfg, self.device = cfg, device
        t = cfg.train
        nets = build_networks(cfg)
        self.memory_format = torch.channels_last if (t.channels_last and device.type == "cuda") else torch.contiguous_format
        for net in nets.values():
            net.to(device, memory_format=self.memory_format)
        self.nets = nets  # plain modules (state dicts, frozen-D forwards)
        self.opts = {
            "g1": torch.optim.Adam(nets["g1"].parameters(), lr=t.lr_g, betas=t.betas),
            "g2": torch.optim.Adam(nets["g2"].parameters(), lr=t.lr_g, betas=t.betas),
            "d1": torch.optim.Adam(nets["d1"].parameters(), lr=t.lr_d, betas=t.betas),
            "d2": torch.optim.Adam(nets["d2"].parameters(), lr=t.lr_d, betas=t.betas),
        }
        self.run = dict(nets)  # what forward passes go through (DDP / compiled wrappers)
        self.ddp = ddp
        if ddp:
            from torch.nn.parallel import DistributedDataParallel as DDP
            ids = [local_rank] if device.type == "cuda" else None
            self.run = {k: DDP(v, device_ids=ids) for k, v in nets.items()}
        if t.compile:
            self.run = {k: torch.compile(v, backend=t.compile_backend) for k, v in self.run.items()}
        self.amp = t.amp_bf16 and device.type == "cuda"
        self.vgg: VGG19Features | None = None
        self.warnings: list[str] = []
        weights = t.resolved_vgg19_weights()
        wants_vgg = cfg.losses.perceptual_weight > 0 or cfg.losses.style_weight > 0
        if wants_vgg and weights is None:
            self.warnings.append("no VGG19 weights (TrainConfig.vgg19_weights / EDGEFILL_VGG19_WEIGHTS): "
                                 "perceptual and style losses are OFF")
        elif wants_vgg:
            self.vgg = VGG19Features()
            self.vgg.load_torchvision_weights(weights)
            self.vgg.to(device)
        self.state = TrainState()
        self.ema: dict[str, dict[str, torch.Tensor]] = {}
        # names of learnable tensors (averaged); other state (spectral-norm vectors, ...) is copied
        self._ema_params = {k: {n for n, _ in unwrap(nets[k]).named_parameters()} for k in ("g1", "g2")}

    # ------------------------------------------------------------------ helpers
    def _check(self, name: str, value: torch.Tensor) -> None:
        """Raise :class:`TrainingDivergedError` on NaN/inf - on every rank together under DDP
        (one tiny all-reduce), so no rank is left waiting in a gradient all-reduce."""
        finite = torch.isfinite(value.detach()).all().to(torch.int32).reshape(1)
        if self.ddp:
            import torch.distributed as dist
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if not bool(finite.item()):
            raise TrainingDivergedError(f"{name} loss is {value.item()} (on this or another rank) at step {self.state.step + 1} "
                                        f"(stage {self.state.stage}); training stopped, last good checkpoint kept")

    def _update(self, name: str, loss: torch.Tensor) -> None:
        """NaN/inf guard, then one optimiser step of network ``name`` on ``loss``."""
        self._check(name.upper(), loss)
        self.opts[name].zero_grad(set_to_none=True)
        loss.backward()
        self.opts[name].step()

    def _discriminator_update(self, name: str, real: torch.Tensor, fake: torch.Tensor, kind: str) -> torch.Tensor:
        """One update of discriminator ``name`` on real and generated samples: D gets gradient from
        both terms (only the generator's graph is cut, by ``fake.detach()``)."""
        self.nets[name].requires_grad_(True)
        with _autocast(self.device, self.amp):
            logits, _ = self.run[name](torch.cat([real, fake.detach()]))
        d_real, d_fake = logits.float().chunk(2)
        loss = discriminator_loss(d_real, d_fake, kind)
        self._update(name, loss)
        return loss

    def _to(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)

    # ------------------------------------------------------------------ steps
    def set_learning_rates(self) -> None:
        """Learning rates for the coming step (a pure function of the step: resumes exactly)."""
        t = self.cfg.train
        factor = 1.0
        if t.lr_schedule == "cosine" and t.max_steps > 0:
            progress = min(1.0, self.state.step / t.max_steps)
            factor = t.lr_min_factor + (1 - t.lr_min_factor) * 0.5 * (1 + math.cos(math.pi * progress))
        for name, opt in self.opts.items():
            base = t.lr_g if name.startswith("g") else t.lr_d
            for group in opt.param_groups:
                group["lr"] = base * factor

    def edge_step(self, edges: torch.Tensor, known: torch.Tensor, mask: torch.Tensor) -> tuple[dict[str, float], torch.Tensor]:
        """One D1 + G1 update: G1 sees (mask, ``known`` edges - the deployment input), its target is
        the full-image ``edges``. Stage 1: D1 judges whole edge maps with the L1 objective and L1
        feature matching; stage 2: D1 judges ``edges * M`` vs ``gen * M`` with the L2 objective and
        L2 feature matching. Returns scalars and G1's edge probability (detached)."""
        L, stage = self.cfg.losses, self.state.stage
        kind = L.edge_adv_stage1 if stage == 1 else L.edge_adv_stage2
        fm_norm = "l1" if stage == 1 else "l2"
        g1, d1 = self.run["g1"], self.nets["d1"]
        with _autocast(self.device, self.amp):
            gen = g1(known, mask).float()
        real_in, fake_in = (edges, gen) if stage == 1 else (edges * mask, gen * mask)
        loss_d = self._discriminator_update("d1", real_in, fake_in, kind)
        # G1 against the updated D1 (frozen, plain module: no DDP sync for D here).
        d1.requires_grad_(False)
        with _autocast(self.device, self.amp):
            with torch.no_grad():
                _, real_feats = d1(real_in)
            g_logits, fake_feats = d1(fake_in)
        adv = gan_loss(g_logits.float(), True, kind)
        fm = feature_matching_loss([f.float() for f in real_feats], [f.float() for f in fake_feats], fm_norm)
        st = structure_loss(gen, edges, mask, L.ssim_window)
        loss_g = L.edge_adv_weight * adv + L.edge_fm_weight * fm + L.edge_structure_weight * st
        self._update("g1", loss_g)
        d1.requires_grad_(True)
        with torch.no_grad():
            mape, exact = edge_mape(gen, edges, mask), edge_mape_exact(gen, edges, mask)
        return ({"d1": loss_d.item(), "g1": loss_g.item(), "g1_adv": adv.item(), "g1_fm": fm.item(),
                 "g1_structure": st.item(), "edge_mape": mape.item(), "edge_mape_exact": exact.item()}, gen.detach())

    def inpaint_step(self, image: torch.Tensor, edges_in: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
        """One D2 + G2 update on ``edges_in`` (ground truth or G1's composite)."""
        L = self.cfg.losses
        g2, d2 = self.run["g2"], self.nets["d2"]
        with _autocast(self.device, self.amp):
            out = g2(image * (1 - mask), edges_in, mask).float()
        scalars: dict[str, float] = {}
        loss_g = image.new_zeros(())
        if L.inpaint_adv_weight > 0:
            loss_d = self._discriminator_update("d2", image, out, L.inpaint_adv)
            d2.requires_grad_(False)
            with _autocast(self.device, self.amp):
                g_logits, _ = d2(out)
            adv = gan_loss(g_logits.float(), True, L.inpaint_adv)
            loss_g = loss_g + L.inpaint_adv_weight * adv
            scalars.update(d2=loss_d.item(), g2_adv=adv.item())
        if L.inpaint_objective == "log_mse":
            l1 = hole_log_mse(out, image, mask)
        else:
            scale = known_stats(image, 1 - mask)[1] if L.inpaint_l1_scaled else None
            l1 = hole_normalised_l1(out, image, mask, scale=scale)
        loss_g = loss_g + L.inpaint_l1_weight * l1
        if self.vgg is not None:
            perc, style = perceptual_and_style(self.vgg, out, image, mask)
            loss_g = loss_g + L.perceptual_weight * perc + L.style_weight * style
            scalars.update(g2_perceptual=perc.item(), g2_style=style.item())
        self._update("g2", loss_g)
        d2.requires_grad_(True)
        with torch.no_grad():
            hole_l1 = hole_mean_l1(out, image, mask)
        return {"g2": loss_g.item(), "g2_l1": l1.item(), "hole_l1": hole_l1.item(), **scalars}

    def train_step(self, batch: dict) -> dict[str, float]:
        """One step of ``cfg.train.mode`` on a batch of :class:`pipeline.dataset.TrainingSamples`."""
        mode = self.cfg.train.mode
        image, edges, known, mask = (self._to(batch[k]) for k in ("image", "edges", "known_edges", "mask"))
        for name in ("g1", "g2", "d1", "d2"):
            self.nets[name].train()
        self.set_learning_rates()
        scalars: dict[str, float] = {}
        if mode in ("edge", "joint"):
            s, gen = self.edge_step(edges, known, mask)
            scalars.update(s)
        if mode in ("inpaint", "joint"):
            edges_in = edges if mode == "inpaint" else known * (1 - mask) + gen * mask
            scalars.update(self.inpaint_step(image, edges_in, mask))
        self.state.step += 1
        self.update_ema()
        return scalars

    # ------------------------------------------------------------------ weight averaging
    def update_ema(self) -> None:
        """``ema = d * ema + (1 - d) * weights`` for G1 and G2 (``TrainConfig.ema_decay``; buffers
        such as spectral-norm vectors are copied). The first call starts the average at the weights."""
        d = self.cfg.train.ema_decay
        if d <= 0:
            return
        with torch.no_grad():
            for key in ("g1", "g2"):
                state = unwrap(self.nets[key]).state_dict()
                if key not in self.ema:
                    self.ema[key] = {k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone()
                                     for k, v in state.items()}
                    continue
                for k, v in state.items():
                    if v.is_floating_point() and k in self._ema_params[key]:
                        self.ema[key][k].mul_(d).add_(v.detach().float(), alpha=1 - d)
                    else:
                        self.ema[key][k].copy_(v)

    def averaged_generators(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        """(G1, G2) carrying the averaged weights (copies), or the live networks when averaging is off."""
        if not self.ema:
            return self.nets["g1"], self.nets["g2"]
        import copy

        out = []
        for key in ("g1", "g2"):
            net = copy.deepcopy(unwrap(self.nets[key]))
            net.load_state_dict({k: v.to(net.state_dict()[k].dtype) for k, v in self.ema[key].items()})
            out.append(net)
        return out[0], out[1]

    # ------------------------------------------------------------------ stage switch
    def maybe_switch_stage(self, validation_mape: float | None) -> bool:
        """Stage 1 -> 2 when the validation edge MAPE < threshold or ``max_stage1_epochs`` ran.
        Under DDP rank 0 decides and every rank takes its decision (broadcast)."""
        s = self.cfg.schedule
        why = None
        if self.state.stage == 1:
            if validation_mape is not None and validation_mape < s.mape_threshold:
                why = f"validation edge MAPE {validation_mape:.4f} < {s.mape_threshold}"
            elif self.state.epoch >= s.max_stage1_epochs:
                why = f"epoch {self.state.epoch} reached max_stage1_epochs={s.max_stage1_epochs}"
        switch = why is not None
        if self.ddp:
            import torch.distributed as dist
            flag = torch.tensor([int(switch)], dtype=torch.int64)
            dist.broadcast(flag, src=0)
            switch = bool(flag.item())
        if not switch:
            return False
        self.state.stage, self.state.stage_switch_step = 2, self.state.step
        msg = f"G1 loss stage 1 -> 2 at step {self.state.step}: {why or 'decided on rank 0'}"
        self.state.events.append(msg)
        log.warning(msg)
        return True

    # ------------------------------------------------------------------ checkpoint state
    def rng_state(self) -> dict:
        """This process's RNG state (torch CPU, CUDA, python ``random``); sample draws are seeded
        per sample key (:mod:`models.data`) and need no state."""
        rng = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return rng

    def set_rng_state(self, rng: dict) -> None:
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "python" in rng:
            random.setstate((3, tuple(int(v) for v in rng["python"]), None))
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    def checkpoint_payload(self, rng_per_rank: list[dict] | None = None) -> dict:
        """Everything exact resume needs; ``rng_per_rank`` = every DDP rank's :meth:`rng_state`."""
        st = self.state
        rng_per_rank = rng_per_rank or [self.rng_state()]
        return {"architecture_hash": self.cfg.architecture_hash(), "epoch": st.epoch, "stage": st.stage,
                "stage_switch_step": st.stage_switch_step, "events": list(st.events),
                "best": {"step": st.best_step, "value": st.best_value}, "seconds": st.seconds,
                "data_position": {"epoch": st.epoch, "batch": st.batch},
                "models": {k: unwrap(v).state_dict() for k, v in self.nets.items()},
                **({"ema": {k: dict(v) for k, v in self.ema.items()}} if self.ema else {}),
                "optimizers": {k: o.state_dict() for k, o in self.opts.items()},
                "rng": rng_per_rank[0], "rng_per_rank": rng_per_rank}

    def restore(self, ckpt: dict, *, weights_only: bool = False, rank: int = 0, world: int = 1) -> None:
        """Resume from a checkpoint; ``weights_only`` (fine-tuning) keeps fresh optimisers/counters
        but takes the G1 loss stage."""
        for key, net in self.nets.items():
            if key in ckpt["models"]:
                load_state(net, ckpt["models"][key], key.upper())
        self.state.stage = int(ckpt.get("stage", 1))
        self.ema = {k: {n: t.float() if t.is_floating_point() else t for n, t in v.items()}
                    for k, v in (ckpt.get("ema") or {}).items()} if not weights_only else {}
        if weights_only:
            return
        try:
            for key, opt in self.opts.items():
                opt.load_state_dict(ckpt["optimizers"][key])
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"checkpoint optimiser state does not fit: {exc}") from exc
        pos = ckpt.get("data_position", {})
        self.state.step = int(ckpt["step"])
        self.state.epoch, self.state.batch = int(pos.get("epoch", 0)), int(pos.get("batch", 0))
        self.state.stage_switch_step = ckpt.get("stage_switch_step")
        self.state.events = list(ckpt.get("events", []))
        best = ckpt.get("best") or {}
        self.state.best_step, self.state.best_value = best.get("step"), best.get("value")
        self.state.seconds = float(ckpt.get("seconds", 0.0))
        per_rank = ckpt.get("rng_per_rank") or []
        self.set_rng_state(per_rank[rank] if len(per_rank) == world else ckpt.get("rng", {}))
