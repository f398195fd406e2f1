"""Identity in pictures of several subjects (group prompts with one LoRA per subject).

Every face of every image is detected and embedded on its own and matched to the subjects
one to one (``faces.subjects``: the assignment of highest total cosine, a match below the
threshold left unassigned). Per subject: its mean identity cosine over the images it was
found in, and how often it was found. Over all faces: the **identity leakage** rate, the
share of assigned faces that also resemble another subject at or above the threshold (a
blend of two people), and the **stranger** rate, faces that match no subject.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .report import Row


def group_rows(generated: Sequence[np.ndarray], subjects: dict[str, Sequence[np.ndarray]],
               embedder: str = "dlib", threshold: float | None = None) -> list[Row]:
    """Rows of per-subject identity, presence, leakage and strangers over ``generated``."""
    from ..faces.identity import Reference, get_embedder
    from ..faces.subjects import score_group

    if len(generated) == 0:
        raise ValueError("generated: no images to evaluate")
    if len(subjects) < 2:
        raise ValueError(f"subjects: two or more subjects' reference photos expected, got {len(subjects)}")
    emb = get_embedder(embedder)
    limit = emb.threshold if threshold is None else float(threshold)
    names = list(subjects)
    means = []
    for name in names:
        if len(subjects[name]) == 0:
            raise ValueError(f"subject '{name}': no reference photos")
        try:
            means.append(Reference(emb.embed(subjects[name])).mean)
        except ValueError as exc:
            raise ValueError(f"subject '{name}': {exc}") from None
    matrix = np.stack(means)
    groups = [score_group(emb, image, matrix, limit) for image in generated]
    rows = [Row("faces per image", float(np.mean([g.faces for g in groups])),
                f"{len(names)} subjects, {len(generated)} images")]
    for i, name in enumerate(names):
        found = [g.scores[i] for g in groups if g.scores[i] is not None]
        rows.append(Row(f"{name}: present", len(found) / len(groups), f"images with a face assigned to {name}"))
        rows.append(Row(f"{name}: identity cosine", float(np.mean(found)) if found else None,
                        f"{emb.name}, threshold {limit}", "ok" if found else f"skipped: {name} found in no image"))
    assigned = sum(sum(m.subject is not None for m in g.assignment.faces) for g in groups)
    faces = sum(g.faces for g in groups)
    leaking = sum(g.assignment.leaking for g in groups)
    rows.append(Row("identity leakage", leaking / assigned if assigned else None,
                    "assigned faces that also resemble another subject at the threshold",
                    "ok" if assigned else "skipped: no face assigned to a subject"))
    rows.append(Row("strangers", (faces - assigned) / faces if faces else None, "faces that match no subject",
                    "ok" if faces else "skipped: no face in any image"))
    return rows
