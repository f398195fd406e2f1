"""Photometric preprocessing (reference 000, Fig. 4c), each stage optional and measurable:

- ``white_balance``: grey-world, the three channel means become equal;
- ``clahe``: contrast-limited adaptive histogram equalisation of the L channel (Lab);
- ``contrast``: global stretch of the luminance between two percentiles;
- ``denoise``: non-local means on colour images.
"""
from __future__ import annotations

import cv2
import numpy as np


def grey_world(image: np.ndarray) -> np.ndarray:
    """Scale each channel so its mean equals the mean of all three (grey-world)."""
    pixels = image.astype(np.float32)
    means = pixels.reshape(-1, 3).mean(0)
    gain = means.mean() / np.maximum(means, 1e-3)
    return np.clip(pixels * gain + 0.5, 0, 255).astype(np.uint8)


def clahe_l(image: np.ndarray, clip_limit: float = 2.0, tiles: int = 8) -> np.ndarray:
    """CLAHE on the L channel of Lab; hue and saturation are left alone."""
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    eq = cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=(tiles, tiles))
    lab[:, :, 0] = eq.apply(lab[:, :, 0])
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def stretch_contrast(image: np.ndarray, low_pct: float = 1.0, high_pct: float = 99.0) -> np.ndarray:
    """Map the luminance percentiles [low, high] onto [0, 255] (colours scaled alike)."""
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    lum = lab[:, :, 0].astype(np.float32)
    lo, hi = np.percentile(lum, [low_pct, high_pct])
    if hi - lo < 1.0:
        return image.copy()
    lab[:, :, 0] = np.clip((lum - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def denoise(image: np.ndarray, strength: float = 5.0) -> np.ndarray:
    """Non-local means denoising (colour); ``strength`` is the filter's h in 0..255 units."""
    return cv2.fastNlMeansDenoisingColored(np.ascontiguousarray(image), None,
                                           float(strength), float(strength), 5, 15)


def preprocess(image: np.ndarray, cfg) -> tuple[np.ndarray, list[str]]:
    """Apply the stages switched on in ``cfg`` (a PrepareConfig); returns (image, stages run)."""
    done = []
    if cfg.white_balance:
        image = grey_world(image)
        done.append("white_balance")
    if cfg.clahe:
        image = clahe_l(image, cfg.clahe_clip_limit)
        done.append("clahe")
    if cfg.contrast:
        image = stretch_contrast(image)
        done.append("contrast")
    if cfg.denoise:
        image = denoise(image, cfg.denoise_strength)
        done.append("denoise")
    return image, done
