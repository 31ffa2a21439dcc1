"""VGG19 feature extractor with torchvision's layer layout (so its ImageNet state dict loads).

torchvision does not import beside torch 2.13 here, so the ``features`` stack is defined
directly: indices and shapes match ``torchvision.models.vgg19().features`` and keys are
``features.<i>.weight|bias``; ``classifier.*`` keys of a full state dict are ignored. Nothing
is downloaded: pass a path (``TrainConfig.vgg19_weights`` or ``$EDGEFILL_VGG19_WEIGHTS``).

Input: RGB float in [0, 1] (ImageNet mean/std normalisation is applied inside). Output: the
ReLU activations EdgeConnect uses (relu1_1 ... relu5_2 names as in its ``VGG19`` class).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

# torchvision's "E" configuration: channel counts, "M" = 2x2 max pool.
VGG19_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
                512, 512, 512, 512, "M"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _relu_names() -> list[str]:
    names, block, idx = [], 1, 1
    for v in VGG19_LAYOUT:
        if v == "M":
            names.append(None)
            block, idx = block + 1, 1
        else:
            names += [None, f"relu{block}_{idx}"]  # conv, then its ReLU
            idx += 1
    return names


class VGG19Features(nn.Module):
    """Frozen VGG19 ``features``; ``forward(rgb01) -> {relu_name: activation}``."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for v in VGG19_LAYOUT:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(in_ch, v, 3, padding=1), nn.ReLU(inplace=False)]
                in_ch = v
        self.features = nn.Sequential(*layers)
        self.names = _relu_names()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def load_torchvision_weights(self, path: str | Path) -> None:
        """Load ``vgg19-*.pth`` (torchvision's ImageNet weights) from ``path``."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"VGG19 weights {path} not found")
        state = torch.load(path, map_location="cpu", weights_only=True)
        feats = {k: v for k, v in state.items() if k.startswith("features.")}
        if not feats:
            raise ValueError(f"{path} holds no 'features.*' keys: not torchvision VGG19 weights")
        self.load_state_dict(feats, strict=True)

    def forward(self, rgb01: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (rgb01 - self.mean) / self.std
        out = {}
        for layer, name in zip(self.features, self.names):
            x = layer(x)
            if name:
                out[name] = x
            if name == "relu5_4":
                break
        return out
