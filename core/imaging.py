"""Conversions between ComfyUI's tensor conventions and numpy/PIL, in one place.

ComfyUI: IMAGE is ``[B, H, W, C]`` float32 in 0..1, MASK is ``[B, H, W]`` float32 in 0..1.
Headless code works on ``uint8`` RGB numpy arrays ``[H, W, 3]`` and float masks ``[H, W]``.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image


def to_uint8_rgb(image: np.ndarray | Image.Image) -> np.ndarray:
    """Any image (PIL, float 0..1, uint8, gray, RGBA) as a contiguous ``uint8 [H, W, 3]``."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"image: expected [H, W, 3] pixels, got shape {tuple(arr.shape)}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    if arr.shape[2] == 4:
        arr = arr[:, :, :3]
    return np.ascontiguousarray(arr)


def images_to_tensor(images: Sequence[np.ndarray | Image.Image]) -> torch.Tensor:
    """A list of same-size images -> ComfyUI IMAGE ``[B, H, W, 3]`` float32 in 0..1."""
    if len(images) == 0:
        raise ValueError("images: the batch is empty")
    arrays = [to_uint8_rgb(im) for im in images]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"images: a batch needs one size, got sizes {sorted(shapes)}")
    stacked = np.stack(arrays).astype(np.float32) / 255.0
    return torch.from_numpy(stacked)


def tensor_to_images(tensor: torch.Tensor) -> list[np.ndarray]:
    """ComfyUI IMAGE ``[B, H, W, C]`` (or one ``[H, W, C]``) -> list of ``uint8 [H, W, 3]``."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"image: expected a torch.Tensor, got {type(tensor).__name__}")
    if tensor.ndim == 3:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 4:
        raise ValueError(f"image: expected [B, H, W, C], got shape {tuple(tensor.shape)}")
    arr = tensor.detach().float().cpu().clamp(0, 1).numpy()
    return [to_uint8_rgb(a) for a in arr]


def masks_to_tensor(masks: Iterable[np.ndarray]) -> torch.Tensor:
    """Float masks ``[H, W]`` in 0..1 -> ComfyUI MASK ``[B, H, W]``."""
    arrays = [np.asarray(m, dtype=np.float32) for m in masks]
    if not arrays:
        raise ValueError("masks: the batch is empty")
    return torch.from_numpy(np.clip(np.stack(arrays), 0.0, 1.0))


def tensor_to_masks(tensor: torch.Tensor) -> list[np.ndarray]:
    """ComfyUI MASK ``[B, H, W]`` (or ``[H, W]``) -> list of float32 ``[H, W]``."""
    if tensor.ndim == 2:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 3:
        raise ValueError(f"mask: expected [B, H, W], got shape {tuple(tensor.shape)}")
    return [m for m in tensor.detach().float().cpu().clamp(0, 1).numpy()]


def grid(images: Sequence[np.ndarray], columns: int = 4, cell: int = 256,
         background: int = 24) -> np.ndarray:
    """A preview contact sheet: every image resized into a ``cell`` square, row-major."""
    if not images:
        return np.full((cell, cell, 3), background, np.uint8)
    columns = max(1, min(columns, len(images)))
    rows = (len(images) + columns - 1) // columns
    sheet = np.full((rows * cell, columns * cell, 3), background, np.uint8)
    for i, im in enumerate(images):
        pil = Image.fromarray(to_uint8_rgb(im))
        pil.thumbnail((cell, cell), Image.Resampling.LANCZOS)
        r, c = divmod(i, columns)
        y = r * cell + (cell - pil.height) // 2
        x = c * cell + (cell - pil.width) // 2
        sheet[y:y + pil.height, x:x + pil.width] = np.asarray(pil)
    return sheet
