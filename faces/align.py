"""Geometric normalisation: 5-point similarity alignment onto a canonical face template,
and an aspect-preserving crop for subjects that are not faces."""
from __future__ import annotations

import math
from typing import Literal

import cv2
import numpy as np

# The widely used 5-point template of a tight 112x112 face crop (eyes, nose, mouth corners).
_TEMPLATE_112 = np.array([
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
], dtype=np.float64)

# Eyes count most: a training set wants the eyes in the same place in every image.
LANDMARK_WEIGHTS = np.array([4.0, 4.0, 1.0, 1.0, 1.0])

BORDER_MODES = {"reflect": cv2.BORDER_REFLECT_101, "replicate": cv2.BORDER_REPLICATE,
                "constant": cv2.BORDER_CONSTANT}
BorderMode = Literal["reflect", "replicate", "constant"]
AlignMode = Literal["eyes", "five_point"]


def face_template(size: int, margin: float) -> np.ndarray:
    """Template landmarks at ``size`` px: the tight 112 px crop, centred, occupying
    ``1 / (1 + 2 * margin)`` of the output width (margin 0 = the tight crop)."""
    if size <= 0:
        raise ValueError(f"size: must be positive, got {size}")
    if margin < 0:
        raise ValueError(f"face_margin: must be >= 0, got {margin}")
    span = size / (1.0 + 2.0 * margin)
    return (_TEMPLATE_112 / 112.0 - 0.5) * span + size / 2.0


def similarity_transform(src: np.ndarray, dst: np.ndarray,
                         weights: np.ndarray | None = None) -> np.ndarray:
    """Weighted least-squares similarity (rotation, uniform scale, translation; no
    reflection) mapping ``src`` points onto ``dst``; returns a 2x3 matrix (Umeyama)."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64)
    w = w / w.sum()
    mu_s = (w[:, None] * src).sum(0)
    mu_d = (w[:, None] * dst).sum(0)
    s_c, d_c = src - mu_s, dst - mu_d
    var_s = (w * (s_c ** 2).sum(1)).sum()
    if var_s <= 1e-12:
        raise ValueError("landmarks: all points coincide, no transform is defined")
    cov = (w[:, None, None] * (d_c[:, :, None] * s_c[:, None, :])).sum(0)
    u, sig, vt = np.linalg.svd(cov)
    d = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1, 1] = -1
    rot = u @ d @ vt
    scale = (sig * np.diag(d)).sum() / var_s
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rot
    matrix[:, 2] = mu_d - scale * rot @ mu_s
    return matrix


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def transform_scale(matrix: np.ndarray) -> float:
    """How many output pixels one source pixel becomes."""
    return float(math.sqrt(abs(np.linalg.det(matrix[:, :2]))))


def alignment_matrix(landmarks: np.ndarray, size: int, margin: float,
                     mode: AlignMode = "eyes") -> np.ndarray:
    """2x3 similarity from source pixels to the aligned ``size`` x ``size`` image.

    ``eyes``: the two eye centres land exactly on the template's (rotation and scale from
    the eye line), so every image of a dataset has its eyes at the same pixels.
    ``five_point``: weighted least squares over all 5 landmarks (eyes weigh most), which
    spreads the error over the face instead.
    """
    template = face_template(size, margin)
    if mode == "eyes":
        return similarity_transform(landmarks[:2], template[:2])
    if mode == "five_point":
        return similarity_transform(landmarks, template, LANDMARK_WEIGHTS)
    raise ValueError(f"align_mode: must be 'eyes' or 'five_point', got '{mode}'")


def crop_subject(image: np.ndarray, size: int, box: np.ndarray | None = None,
                 margin: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Aspect-preserving square crop for non-face subjects (pets, objects).

    Centre crop of the shorter side, or a square around ``box`` (x1, y1, x2, y2) grown by
    ``margin`` and clamped inside the image; then resized to ``size``. Returns
    (crop, 2x3 matrix from source to output pixels).
    """
    h, w = image.shape[:2]
    if box is None:
        side = min(h, w)
        cx, cy = w / 2.0, h / 2.0
    else:
        x1, y1, x2, y2 = [float(v) for v in box]
        if x2 <= x1 or y2 <= y1:
            raise ValueError(f"subject_box: x2 > x1 and y2 > y1 required, got {list(box)}")
        side = min(max(x2 - x1, y2 - y1) * (1.0 + 2.0 * margin), float(min(h, w)))
        cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    x0 = min(max(cx - side / 2.0, 0.0), w - side)
    y0 = min(max(cy - side / 2.0, 0.0), h - side)
    scale = size / side
    matrix = np.array([[scale, 0.0, -x0 * scale], [0.0, scale, -y0 * scale]])
    interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_CUBIC
    crop = cv2.warpAffine(image, matrix, (size, size), flags=interp,
                          borderMode=cv2.BORDER_REPLICATE)
    return crop, matrix


def estimate_yaw(landmarks: np.ndarray, nose_depth: float = 0.5) -> float:
    """Head yaw in degrees from 5 landmarks (0 = frontal, sign = direction).

    In the eye-line frame, the nose tip's offset from the eye midpoint over the
    inter-ocular distance is ``nose_depth * tan(yaw)`` for a head whose nose tip stands
    ``nose_depth`` inter-ocular distances in front of the eye plane (about 0.5 for adults).
    """
    left, right, nose = landmarks[0], landmarks[1], landmarks[2]
    axis = right - left
    iod = float(np.hypot(*axis))
    if iod < 1e-6:
        return 90.0
    u = axis / iod
    offset = float(np.dot(nose - (left + right) / 2.0, u))
    return math.degrees(math.atan2(offset / iod, nose_depth))


def estimate_roll(landmarks: np.ndarray) -> float:
    """Angle of the eye line in degrees (0 = level)."""
    dx, dy = landmarks[1] - landmarks[0]
    return math.degrees(math.atan2(dy, dx))
