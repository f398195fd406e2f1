"""Inception-v3 pool features (2048-d) for FID and KID, from torchvision's architecture
with its ImageNet weights looked up on disk (never downloaded silently).

The values are comparable between runs of Persona; they differ slightly from numbers made
with the TF-Inception port of pytorch-fid, which uses other weights.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..core.weights import INCEPTION, find_weights

_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def inception_path():
    return find_weights(INCEPTION)


class InceptionFeatures(torch.nn.Module):
    def __init__(self, weights: str = "pretrained"):
        super().__init__()
        import torchvision

        net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=weights == "random")
        if weights == "pretrained":
            net.load_state_dict(torch.load(inception_path(), map_location="cpu", weights_only=True))
        elif weights != "random":
            raise ValueError(f"weights: 'pretrained' or 'random', got '{weights}'")
        net.fc = torch.nn.Identity()
        self.net = net.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` in 0..1 -> ``[B, 2048]``."""
        x = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
        return self.net((x - _MEAN.to(x)) / _STD.to(x))


@functools.lru_cache(maxsize=1)
def inception_model() -> InceptionFeatures:
    return InceptionFeatures("pretrained")


def features(model: InceptionFeatures, images: Sequence[np.ndarray], batch: int = 16) -> np.ndarray:
    """Features of images of any sizes (each resampled to Inception's 299 px)."""
    import cv2

    from .ssim import to_tensor

    sized = [cv2.resize(im, (299, 299), interpolation=cv2.INTER_AREA if min(im.shape[:2]) > 299
                        else cv2.INTER_LINEAR) for im in images]
    out = [model(to_tensor(sized[i:i + batch])).double().numpy() for i in range(0, len(sized), batch)]
    return np.concatenate(out)
