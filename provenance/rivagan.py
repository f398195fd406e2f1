"""RivaGAN, the learned watermark that ``invisible-watermark`` ships (``imwatermark/
rivagan_encoder.onnx`` and ``rivagan_decoder.onnx``: 32 bits, run with onnxruntime, offline).

The networks run at a working size, not at the image's own: the image is scaled so that its
shorter side is :data:`WORK_SIDE` pixels, the encoder's change at that size is scaled back up
and added to the full image, and the decoder reads the image scaled the same way. So the cost
per image is the same at 512 and at 2048 px, and the mark is read after resizing and cropping
(which change the scale) as well as after JPEG, brightness and screenshot round trips
(``bench/watermark_robustness.py`` measures each). Images whose shorter side is below
:data:`MIN_SIDE` cannot carry it: scaled up to the working size and back, the mark would not
survive.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from ..core.deps import require

BITS = 32
WORK_SIDE = 256  # the shorter side the networks see
MIN_SIDE = 256  # the smallest shorter side that carries the mark
MULTIPLE = 8  # the networks' sizes are multiples of this


@functools.lru_cache(maxsize=1)
def _sessions():
    ort = require("onnxruntime", "The invisible watermark (RivaGAN)")
    imwatermark = require("imwatermark", "The invisible watermark (RivaGAN)")
    folder = Path(imwatermark.__file__).parent
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # the GPU when onnxruntime-gpu is installed (a GPU generation takes seconds), else the CPU
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    return (ort.InferenceSession(str(folder / "rivagan_encoder.onnx"), options, providers=providers),
            ort.InferenceSession(str(folder / "rivagan_decoder.onnx"), options, providers=providers))


def work_size(height: int, width: int) -> tuple[int, int]:
    """(h, w) at the working size: the shorter side :data:`WORK_SIDE`, both multiples of 8."""
    scale = WORK_SIDE / min(height, width)
    return (max(MULTIPLE, round(height * scale / MULTIPLE) * MULTIPLE),
            max(MULTIPLE, round(width * scale / MULTIPLE) * MULTIPLE))


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float32 HxWxC image resized to (h, w), bicubic, channel by channel (values may go
    beyond 0..255: residuals are signed)."""
    from PIL import Image

    h, w = size
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c])).resize(
        (w, h), Image.Resampling.BICUBIC)) for c in range(image.shape[2])], axis=-1)


def _frame(image: np.ndarray) -> np.ndarray:
    """uint8/float RGB HxWx3 (0..255) -> the networks' input [1, 3, 1, H, W] in -1..1."""
    return (image.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None, :, None]


def too_small(height: int, width: int) -> bool:
    return min(height, width) < MIN_SIDE


def embed(image: np.ndarray, bits: list[int], strength: float = 1.0) -> np.ndarray:
    """``image`` (uint8 RGB) with ``bits`` (32 of 0/1) embedded; ``strength`` scales the
    encoder's change (1: as trained, about 42 dB PSNR on photos)."""
    if len(bits) != BITS:
        raise ValueError(f"RivaGAN carries {BITS} bits, got {len(bits)}")
    encoder, _ = _sessions()
    h, w = image.shape[:2]
    size = work_size(h, w)
    small = _resize(image.astype(np.float32), size)
    out = encoder.run(None, {"frame": _frame(small), "data": np.asarray([bits], np.float32)})[0]
    marked = (np.clip(out, -1.0, 1.0)[0, :, 0].transpose(1, 2, 0) + 1.0) * 127.5
    change = _resize((marked - small) * strength, (h, w))
    return np.clip(image.astype(np.float32) + change, 0, 255).round().astype(np.uint8)


def read(image: np.ndarray) -> np.ndarray:
    """The decoder's 32 scores of ``image`` (> 0: bit 1)."""
    _, decoder = _sessions()
    small = _resize(image.astype(np.float32), work_size(*image.shape[:2]))
    return decoder.run(None, {"frame": _frame(small)})[0][0].astype(np.float64)
