"""Quality measurements of one photo's face, and the filter that turns them into reasons.

Scores are measured on a tight face crop warped from the photo at a fixed size
(``MEASURE_SIZE``), so thresholds judge the photo and mean the same thing whatever the
dataset resolution.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .align import estimate_roll, estimate_yaw

MEASURE_SIZE = 256


def sharpness(region: np.ndarray) -> float:
    """Variance of the Laplacian of the gray region (higher = sharper)."""
    gray = cv2.cvtColor(region, cv2.COLOR_RGB2GRAY) if region.ndim == 3 else region
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def exposure(region: np.ndarray) -> tuple[float, float, float]:
    """(mean luminance 0..1, fraction of pixels at or below 5/255, fraction at or above 250/255)."""
    gray = cv2.cvtColor(region, cv2.COLOR_RGB2GRAY) if region.ndim == 3 else region
    return (float(gray.mean()) / 255.0, float((gray <= 5).mean()), float((gray >= 250).mean()))


@dataclass
class QualityScores:
    confidence: float
    face_px: float  # shorter side of the detection box, in full-resolution source pixels
    sharpness: float
    yaw_deg: float
    roll_deg: float
    brightness: float
    dark_fraction: float
    bright_fraction: float
    faces_found: int

    def to_json(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def measure(region: np.ndarray, source_landmarks: np.ndarray, confidence: float,
            face_px: float, faces_found: int) -> QualityScores:
    """Scores of ``region``: the tight face crop at ``MEASURE_SIZE`` px."""
    brightness, dark, bright = exposure(region)
    return QualityScores(
        confidence=float(confidence), face_px=float(face_px), sharpness=sharpness(region),
        yaw_deg=estimate_yaw(source_landmarks), roll_deg=estimate_roll(source_landmarks),
        brightness=brightness, dark_fraction=dark, bright_fraction=bright,
        faces_found=int(faces_found))


def rejection_reason(scores: QualityScores, cfg) -> str | None:
    """The first failed check as a short reason, or None when the photo passes.

    Exposure is checked before blur: a badly exposed face has little contrast and so
    little Laplacian energy, and "underexposed" is the reason a person can act on.

    ``cfg`` is a :class:`~.config.PrepareConfig` (only its threshold fields are read).
    """
    if scores.confidence < cfg.min_confidence:
        return f"low confidence ({scores.confidence:.3f} < {cfg.min_confidence})"
    if scores.face_px < cfg.min_face_px:
        return f"face too small ({scores.face_px:.0f} px < {cfg.min_face_px} px)"
    if abs(scores.yaw_deg) > cfg.max_yaw_deg:
        return f"extreme pose (yaw {scores.yaw_deg:.0f} deg, limit {cfg.max_yaw_deg:.0f})"
    if scores.brightness < cfg.min_brightness or scores.dark_fraction > cfg.max_clipped_fraction:
        return (f"underexposed (brightness {scores.brightness:.2f}, "
                f"{scores.dark_fraction:.0%} black)")
    if scores.brightness > cfg.max_brightness or scores.bright_fraction > cfg.max_clipped_fraction:
        return (f"overexposed (brightness {scores.brightness:.2f}, "
                f"{scores.bright_fraction:.0%} white)")
    if scores.sharpness < cfg.min_sharpness:
        return f"blurry (sharpness {scores.sharpness:.1f} < {cfg.min_sharpness})"
    return None
