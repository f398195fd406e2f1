"""Identity thresholds from a user's own photos: ``persona calibrate PEOPLE_DIR``.

``PEOPLE_DIR`` holds one folder per person (two or more photos each). Every pair of photos
of the same person is a genuine pair, every pair of different people an impostor pair; each
pair's score is the cosine of the embedder's unit vectors. Sweeping the threshold gives the
ROC (false accepts among impostor pairs, false rejects among genuine pairs); the calibrated
threshold is the equal-error point, where the two rates meet (the mean of the two scores
around the crossing). Saved with ``--save``, it replaces the embedder's built-in threshold
wherever a threshold of 0 means "calibrated" (the identity gate, the metrics' pass rate,
validation), until the file is deleted.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..core.paths import cache_root


@dataclass
class Calibration:
    embedder: str
    threshold: float  # equal-error threshold (cosine)
    equal_error_rate: float
    genuine_pairs: int
    impostor_pairs: int
    people: list[str]
    photos: int
    skipped: list[str]  # photos without a face, and why

    def to_json(self) -> dict:
        return asdict(self)


def roc(genuine: np.ndarray, impostor: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, false accept rate, false reject rate) at every score, ascending; a pair
    is accepted at a threshold when its score is at or above it."""
    thresholds = np.unique(np.concatenate([genuine, impostor]))
    far = np.array([(impostor >= t).mean() for t in thresholds])
    frr = np.array([(genuine < t).mean() for t in thresholds])
    return thresholds, far, frr


def equal_error(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float]:
    """(threshold, rate) where false accepts and false rejects meet: the first threshold at
    which FRR >= FAR, moved halfway back to the score below it; the rate is the mean of the
    two there."""
    genuine, impostor = np.asarray(genuine, np.float64), np.asarray(impostor, np.float64)
    if len(genuine) == 0 or len(impostor) == 0:
        raise ValueError("calibration: needs genuine pairs (2+ photos of a person) and impostor pairs (2+ people)")
    thresholds, far, frr = roc(genuine, impostor)
    i = int(np.argmax(frr >= far))
    threshold = thresholds[i] if i == 0 else (thresholds[i] + thresholds[i - 1]) / 2
    return float(threshold), float((far[i] + frr[i]) / 2)


def pair_scores(vectors: np.ndarray, labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Cosines of every pair of unit vectors: (same label, different labels)."""
    sims = vectors @ vectors.T
    i, j = np.triu_indices(len(labels), k=1)
    same = np.array([labels[a] == labels[b] for a, b in zip(i, j)], bool)
    return sims[i, j][same], sims[i, j][~same]


def calibrate(people_dir: str | Path, embedder) -> Calibration:
    from .photos import load_folder

    root = Path(people_dir)
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if len(folders) < 2:
        raise ValueError(f"people_dir: '{root}' needs a folder per person, two or more people")
    images, labels, skipped = [], [], []
    for folder in folders:
        photos, errors = load_folder(folder, max_side=1024)
        skipped += [str(e) for e in errors]
        images += [p.pixels for p in photos]
        labels += [folder.name] * len(photos)
    emb = embedder.embed(images)
    keep = [i for i, ok in enumerate(emb.found) if ok]
    skipped += [f"{labels[i]} photo {i}: no face" for i, ok in enumerate(emb.found) if not ok]
    genuine, impostor = pair_scores(emb.vectors[keep], [labels[i] for i in keep])
    threshold, rate = equal_error(genuine, impostor)
    return Calibration(embedder.name, round(threshold, 4), round(rate, 4), len(genuine), len(impostor),
                       [f.name for f in folders], len(keep), skipped)


def calibration_file(embedder: str) -> Path:
    return cache_root() / "calibration" / f"{embedder}.json"


def save(cal: Calibration) -> Path:
    path = calibration_file(cal.embedder)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cal.to_json(), indent=2) + "\n")
    return path


def saved_threshold(embedder: str) -> float | None:
    """The threshold ``persona calibrate --save`` left for ``embedder``, or None."""
    path = calibration_file(embedder)
    if not path.is_file():
        return None
    return float(json.loads(path.read_text())["threshold"])
