"""Feathered face masks from landmarks, for enhancement and the identity loss."""
from __future__ import annotations

import cv2
import numpy as np


def face_mask(landmarks: np.ndarray, size: tuple[int, int], feather: float = 0.08) -> np.ndarray:
    """Float mask ``[H, W]`` in 0..1: an ellipse over the face, soft-edged.

    The ellipse is centred between the eye midpoint and the mouth midpoint, is 2.2
    inter-ocular distances wide and 3.2 eye-to-mouth distances tall, tilted with the eye
    line; ``feather`` is the blur width as a fraction of the ellipse width.
    """
    h, w = size
    eyes = (landmarks[0] + landmarks[1]) / 2.0
    mouth = (landmarks[3] + landmarks[4]) / 2.0
    iod = float(np.hypot(*(landmarks[1] - landmarks[0])))
    eye_mouth = float(np.hypot(*(mouth - eyes)))
    if iod < 1e-3 or eye_mouth < 1e-3:
        raise ValueError("landmarks: degenerate face (eyes or mouth coincide)")
    centre = eyes * 0.55 + mouth * 0.45
    # a little above the eye/mouth centre, to cover the forehead
    up = (eyes - mouth) / eye_mouth
    centre = centre + up * 0.25 * eye_mouth
    axes = (1.1 * iod, 1.6 * eye_mouth)
    angle = float(np.degrees(np.arctan2(*(landmarks[1] - landmarks[0])[::-1])))
    mask = np.zeros((h, w), np.float32)
    cv2.ellipse(mask, (round(centre[0] * 16), round(centre[1] * 16)),
                (round(axes[0] * 16), round(axes[1] * 16)), angle, 0, 360, 1.0, -1,
                cv2.LINE_AA, shift=4)
    sigma = max(feather * 2.0 * axes[0] / 3.0, 0.0)
    if sigma > 0.3:
        mask = cv2.GaussianBlur(mask, (0, 0), sigma)
    return np.clip(mask, 0.0, 1.0)


def box_mask(box: np.ndarray, size: tuple[int, int], feather: float = 0.08) -> np.ndarray:
    """Feathered rectangle mask for a box (x1, y1, x2, y2), e.g. a non-face subject."""
    h, w = size
    mask = np.zeros((h, w), np.float32)
    x1, y1, x2, y2 = [int(round(v)) for v in box]
    mask[max(0, y1):max(0, y2), max(0, x1):max(0, x2)] = 1.0
    sigma = feather * max(x2 - x1, 1) / 3.0
    if sigma > 0.3:
        mask = cv2.GaussianBlur(mask, (0, 0), sigma)
    return mask
