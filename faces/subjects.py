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
