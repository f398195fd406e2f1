"""Subject fidelity by DINO image features (DreamBench's DINO score): the mean cosine
between the CLS embeddings of every generated image and every reference photo.

DINO ViT-S/16 (the benchmark's model) and DINOv2 ViT-S/14, built with timm's Vision
Transformer (the architecture of the original checkpoints, whose keys it reads as they
are) and the original self-supervised weights, looked up like every other file
(``core.weights``: ComfyUI's ``models/dino``, the Persona cache, torch's hub cache). Images
are resized (shorter side 256, bicubic), centre-cropped to 224 and normalised with ImageNet's
mean and std; DINOv2 interpolates its 518 px position embedding to the 16x16 grid.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch

from ..core.deps import require

KINDS = {"dino_vits16": ("vit_small_patch16_224", {}),
         "dinov2_vits14": ("vit_small_patch14_dinov2", {"img_size": 518, "dynamic_img_size": True})}
LABELS = {"dino_vits16": "DINO subject fidelity (ViT-S/16)", "dinov2_vits14": "DINOv2 subject fidelity (ViT-S/14)"}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def build(kind: str) -> torch.nn.Module:
    """The architecture with random weights, in eval mode, no classification head."""
    timm = require("timm", "DINO features")
    name, extra = KINDS[kind]
    return timm.create_model(name, pretrained=False, num_classes=0, **extra).eval()


def weights_file(kind: str):
    from ..core.weights import DINO_VITS16, DINOV2_VITS14, find_weights

    return find_weights({"dino_vits16": DINO_VITS16, "dinov2_vits14": DINOV2_VITS14}[kind])


def load_original(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Load an original DINO / DINOv2 checkpoint (the keys timm's ViT uses; DINOv2's
    ``mask_token`` and any head are not part of the feature extractor)."""
    state = {k: v for k, v in state.items() if not k.startswith(("head", "mask_token"))}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"DINO weights do not fit the architecture: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model


@functools.lru_cache(maxsize=2)
def dino_model(kind: str = "dino_vits16") -> torch.nn.Module:
    """The model with its pretrained weights (``WeightsNotFound`` naming the file otherwise)."""
    path = weights_file(kind)
    model = build(kind)
    return load_original(model, torch.load(path, map_location="cpu", weights_only=True))


def preprocess(images: Sequence[np.ndarray]) -> torch.Tensor:
    from PIL import Image

    out = []
    for im in images:
        pil = Image.fromarray(im).convert("RGB")
        scale = 256 / min(pil.size)
        pil = pil.resize((max(224, round(pil.width * scale)), max(224, round(pil.height * scale))),
                         Image.Resampling.BICUBIC)
        left, top = (pil.width - 224) // 2, (pil.height - 224) // 2
        x = torch.from_numpy(np.asarray(pil.crop((left, top, left + 224, top + 224)), np.float32) / 255.0)
        out.append((x - torch.tensor(MEAN)) / torch.tensor(STD))
    return torch.stack(out).permute(0, 3, 1, 2)


def features(model: torch.nn.Module, images: Sequence[np.ndarray], batch: int = 16) -> torch.Tensor:
    """Unit CLS embeddings ``[N, D]``."""
    chunks = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            chunks.append(model(preprocess(images[i:i + batch])).float())
    return torch.nn.functional.normalize(torch.cat(chunks), dim=1)


def fidelity(model: torch.nn.Module, generated: Sequence[np.ndarray], references: Sequence[np.ndarray]) -> float:
    """DreamBench's DINO score: mean cosine over all (generated, reference) pairs."""
    return float((features(model, generated) @ features(model, references).T).mean())
