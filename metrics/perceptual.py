"""LPIPS (Zhang et al. 2018, v0.1), implemented here on torchvision's AlexNet / VGG16
features with the linear heads that ship in the ``lpips`` package.

The backbone's ImageNet weights do not ship in any package: they are looked up (ComfyUI's
``models/lpips``, the Persona weights cache, torch's hub cache where torchvision keeps its
downloads); without them the metric is skipped with that reason, never computed on an
untrained backbone, unless the caller passes ``backbone='random'`` (tests only).
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F

from ..core.weights import LPIPS_BACKBONES, find_weights

LAYERS = {"alex": (1, 4, 7, 9, 11), "vgg": (3, 8, 15, 22, 29)}
BACKBONES = LPIPS_BACKBONES
_SHIFT = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
_SCALE = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)


def backbone_path(net: str) -> Path:
    return find_weights(BACKBONES[net])


class LPIPS(torch.nn.Module):
    def __init__(self, net: str = "alex", backbone: str | dict = "pretrained"):
        super().__init__()
        import torchvision

        if net not in LAYERS:
            raise ValueError(f"net: 'alex' or 'vgg', got '{net}'")
        self.taps = set(LAYERS[net])
        model = torchvision.models.alexnet(weights=None) if net == "alex" else torchvision.models.vgg16(weights=None)
        self.backbone = model.features[: LAYERS[net][-1] + 1].eval()
        if isinstance(backbone, dict):
            self.backbone.load_state_dict(backbone, strict=False)
        elif backbone == "pretrained":
            state = torch.load(backbone_path(net), map_location="cpu", weights_only=True)
            self.backbone.load_state_dict({k[len("features."):]: v for k, v in state.items()
                                           if k.startswith("features.") and
                                           int(k.split(".")[1]) <= LAYERS[net][-1]})
        elif backbone != "random":
            raise ValueError(f"backbone: 'pretrained', 'random' or a state dict, got '{backbone}'")
        heads = Path(importlib.util.find_spec("lpips").submodule_search_locations[0]) / "weights" / "v0.1" / f"{net}.pth"
        lin = torch.load(heads, map_location="cpu", weights_only=True)
        self.heads = [lin[f"lin{i}.model.1.weight"] for i in range(5)]
        for p in self.parameters():
            p.requires_grad_(False)

    def _taps(self, x):
        out, taps = x, []
        for i, layer in enumerate(self.backbone):
            out = layer(out)
            if i in self.taps:
                taps.append(out)
        return taps

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised feature maps of ``[B, 3, H, W]`` images in 0..1 (compute once,
        compare many times with :meth:`distance`)."""
        x = ((images * 2 - 1) - _SHIFT.to(images)) / _SCALE.to(images)
        return [f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10) for f in self._taps(x)]

    @torch.no_grad()
    def distance(self, fa: list[torch.Tensor], fb: list[torch.Tensor]) -> torch.Tensor:
        total = 0
        for na, nb, w in zip(fa, fb, self.heads):
            total = total + F.conv2d((na - nb) ** 2, w.to(na)).mean(dim=(2, 3))
        return total.view(-1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Distance per pair of ``[B, 3, H, W]`` images in 0..1."""
        return self.distance(self.features(a), self.features(b))

    def pairwise(self, images: torch.Tensor) -> torch.Tensor:
        """Distances between every pair of ``images`` (features computed once)."""
        feats = self.features(images)
        n = len(images)
        i, j = torch.triu_indices(n, n, offset=1)
        if len(i) == 0:
            return torch.zeros(0)
        return self.distance([f[i] for f in feats], [f[j] for f in feats])


@functools.lru_cache(maxsize=2)
def lpips_model(net: str = "alex") -> LPIPS:
    return LPIPS(net, "pretrained")
