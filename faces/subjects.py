"""Several subjects in one picture: which detected face is whom.

Every face is scored against every subject's reference (cosine of unit embeddings, each
subject's mean reference); faces and subjects are matched one to one by the assignment of
highest total score (the Hungarian algorithm); a match below the threshold leaves the face
unassigned (a stranger) and the subject missing. **Identity leakage** of a face: it resembles
a subject it was not assigned to at or above the threshold as well (a blend of both).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class FaceMatch:
    face: int
    subject: int | None  # None: no subject above the threshold
    score: float  # cosine to its subject (or its best subject when unassigned)
    leaks_to: list[int]  # other subjects it resembles at or above the threshold


@dataclass
class Assignment:
    faces: list[FaceMatch]
    missing: list[int]  # subjects no face was assigned to
    threshold: float

    def per_subject(self, count: int) -> list[float | None]:
        """Each subject's identity score (None where missing)."""
        out: list[float | None] = [None] * count
        for m in self.faces:
            if m.subject is not None:
                out[m.subject] = m.score
        return out

    @property
    def leaking(self) -> int:
        return sum(bool(m.leaks_to) for m in self.faces)


def assign(faces: np.ndarray, subjects: np.ndarray, threshold: float) -> Assignment:
    """``faces`` [F, D] and ``subjects`` [S, D] unit vectors -> the optimal one-to-one match."""
    from scipy.optimize import linear_sum_assignment

    faces, subjects = np.atleast_2d(faces), np.atleast_2d(subjects)
    sims = faces @ subjects.T if len(faces) and len(subjects) else np.zeros((len(faces), len(subjects)))
    rows, cols = linear_sum_assignment(-sims) if sims.size else (np.array([], int), np.array([], int))
    chosen = {int(r): int(c) for r, c in zip(rows, cols) if sims[r, c] >= threshold}
    matches = []
    for f in range(len(faces)):
        subject = chosen.get(f)
        best = int(np.argmax(sims[f])) if len(subjects) else None
        score = float(sims[f, subject if subject is not None else best]) if best is not None else float("nan")
        leaks = [s for s in range(len(subjects)) if s != subject and sims[f, s] >= threshold and subject is not None]
        matches.append(FaceMatch(f, subject, score, leaks))
    missing = [s for s in range(len(subjects)) if s not in chosen.values()]
    return Assignment(matches, missing, threshold)


def embed_each_face(embedder, image: np.ndarray, margin: float = 0.6, min_face_size: int = 20):
    """Every face in ``image``, embedded on its own: each detected face is cut out with
    ``margin`` (a fraction of its size) on every side and embedded by ``embedder`` like any
    image (so every backend works unchanged). Returns (boxes [F, 4], Embeddings of the F faces;
    a crop in which the embedder finds no face is marked not found)."""
    from .identity import Embeddings

    faces = embedder.detector.detect([image], min_face_size=min_face_size)[0]
    h, w = image.shape[:2]
    crops, boxes = [], []
    for face in faces:
        x1, y1, x2, y2 = face.box
        pad_x, pad_y = (x2 - x1) * margin, (y2 - y1) * margin
        left, top = int(max(0, x1 - pad_x)), int(max(0, y1 - pad_y))
        right, bottom = int(min(w, x2 + pad_x)), int(min(h, y2 + pad_y))
        if right - left < 2 or bottom - top < 2:
            continue
        crops.append(np.ascontiguousarray(image[top:bottom, left:right]))
        boxes.append(np.asarray(face.box, np.float64))
    if not crops:
        return np.zeros((0, 4)), Embeddings(np.zeros((0, max(embedder.dim, 1)), np.float32), [])
    return np.stack(boxes), embedder.embed(crops)


@dataclass
class GroupScore:
    """Who is in one picture of several subjects: the assignment of its faces to subjects."""

    assignment: Assignment
    boxes: np.ndarray
    subjects: int

    @property
    def scores(self) -> list[float | None]:
        """Each subject's identity score (None: no face was assigned to the subject)."""
        return self.assignment.per_subject(self.subjects)

    @property
    def faces(self) -> int:
        return len(self.assignment.faces)

    @property
    def weakest(self) -> float | None:
        """The lowest subject score, a missing subject counting as -1 (the lowest cosine);
        None when the picture has no face."""
        if not self.faces:
            return None
        return float(min(-1.0 if s is None else s for s in self.scores))

    def to_json(self, names: list[str] | None = None) -> dict:
        names = names or [f"subject_{i + 1}" for i in range(self.subjects)]
        return {"faces": self.faces,
                "subjects": {n: (None if s is None else round(float(s), 6)) for n, s in zip(names, self.scores)},
                "missing": [names[i] for i in self.assignment.missing],
                "leaking_faces": self.assignment.leaking,
                "matches": [{"face": m.face, "box": [round(float(v), 1) for v in self.boxes[m.face]],
                             "subject": None if m.subject is None else names[m.subject],
                             "score": round(m.score, 6), "leaks_to": [names[s] for s in m.leaks_to]}
                            for m in self.assignment.faces]}


def score_group(embedder, image: np.ndarray, subjects: np.ndarray, threshold: float) -> GroupScore:
    """Detect every face of ``image``, embed each, and assign them to ``subjects`` [S, D]
    (each subject's mean reference, unit vectors) one to one (:func:`assign`)."""
    boxes, emb = embed_each_face(embedder, image)
    keep = np.array(emb.found, bool)
    boxes = boxes[keep] if len(boxes) else boxes
    return GroupScore(assign(emb.vectors[keep] if len(keep) else emb.vectors, subjects, threshold), boxes,
                      len(np.atleast_2d(subjects)))
