"""Face detection with MTCNN (facenet-pytorch; its P/R/O-Net weights ship in the wheel).

One detector per (device) per process; images of one size are detected in one batched call.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..core.deps import require

log = logging.getLogger(__name__)


@dataclass
class Face:
    """One detected face, in the pixel coordinates of the image it was found in.

    ``landmarks`` are 5 (x, y) points: left eye, right eye, nose, left and right mouth
    corners, where left/right are as seen in the image (left eye has the smaller x).
    """

    box: np.ndarray  # [4] x1, y1, x2, y2
    probability: float
    landmarks: np.ndarray  # [5, 2]
    extra: dict = field(default_factory=dict)

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    def scaled(self, factor: float) -> "Face":
        return Face(self.box * factor, self.probability, self.landmarks * factor, dict(self.extra))

    def to_json(self) -> dict:
        return {"box": [round(float(v), 2) for v in self.box],
                "probability": round(float(self.probability), 6),
                "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks]}


@functools.lru_cache(maxsize=4)
def _mtcnn(device: str, min_face_size: int):
    facenet = require("facenet_pytorch", "Face detection (MTCNN)")
    return facenet.MTCNN(keep_all=True, device=device, min_face_size=min_face_size,
                         post_process=False, select_largest=False)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class FaceDetector:
    """MTCNN with its weights loaded once; ``detect`` takes a batch of RGB uint8 arrays."""

    def __init__(self, device: str | None = None, min_face_size: int = 20):
        self.device = device or default_device()
        self.min_face_size = int(min_face_size)
        self._model = _mtcnn(self.device, self.min_face_size)

    def detect(self, images: Sequence[np.ndarray], min_face_size: float | None = None,
               ) -> list[list[Face]]:
        """Faces found in each image, sorted by probability (highest first).

        ``min_face_size`` (pixels of these images) stops MTCNN's image pyramid early:
        faces smaller than that are not searched for, which is most of the cost.
        """
        import torch

        from facenet_pytorch.models.utils.detect_face import detect_face

        minsize = max(float(min_face_size or self.min_face_size), 12.0)
        model = self._model
        results: list[list[Face] | None] = [None] * len(images)
        by_shape: dict[tuple, list[int]] = {}
        for i, image in enumerate(images):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"images[{i}]: expected uint8 [H, W, 3], got "
                                 f"{image.dtype} {tuple(image.shape)}")
            by_shape.setdefault(image.shape, []).append(i)
        for indices in by_shape.values():
            batch = np.stack([images[i] for i in indices])
            with torch.inference_mode():
                boxes, points = detect_face(batch, minsize, model.pnet, model.rnet, model.onet,
                                            model.thresholds, model.factor, model.device)
            for j, i in enumerate(indices):
                faces = [Face(np.asarray(b[:4], np.float64), float(b[4]),
                              _ordered(np.asarray(l, np.float64)))
                         for b, l in zip(np.asarray(boxes[j]), np.asarray(points[j]))]
                faces.sort(key=lambda f: -f.probability)
                results[i] = faces
        return [r or [] for r in results]


def _ordered(points: np.ndarray) -> np.ndarray:
    """Put the eyes and the mouth corners in image left-to-right order."""
    points = points.copy()
    if points[0, 0] > points[1, 0]:
        points[[0, 1]] = points[[1, 0]]
    if points[3, 0] > points[4, 0]:
        points[[3, 4]] = points[[4, 3]]
    return points
