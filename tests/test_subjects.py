"""Faces matched to subjects one to one, with leakage."""
from __future__ import annotations

import numpy as np

from comfyui_persona.faces.subjects import assign


def _unit(*rows):
    v = np.array(rows, np.float64)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_the_optimal_assignment_beats_greedy_and_finds_a_swapped_pair():
    subjects = _unit([1, 0, 0], [0, 1, 0])
    # greedy in face order gives face 0 its best, subject 0 (0.8), and leaves face 1 with
    # subject 1 at 0.11; the optimal match pairs face 1 with subject 0 (0.99), face 0 with 1 (0.6)
    faces = _unit([0.8, 0.6, 0], [0.9, 0.1, 0.0])
    a = assign(faces, subjects, threshold=0.5)
    assert [m.subject for m in a.faces] == [1, 0] and a.missing == []
    # swapped order of the faces in the picture: the subjects follow their faces
    b = assign(faces[::-1], subjects, threshold=0.5)
    assert [m.subject for m in b.faces] == [0, 1]
    assert b.per_subject(2) == [b.faces[0].score, b.faces[1].score]


def test_a_face_that_matches_no_one_stays_unassigned_and_a_blend_leaks():
    subjects = _unit([1, 0, 0], [0, 1, 0])
    faces = _unit([1, 0.05, 0], [0, 0, 1])  # subject 0, and a stranger
    a = assign(faces, subjects, threshold=0.5)
    assert a.faces[0].subject == 0 and a.faces[1].subject is None and a.missing == [1]
    assert a.per_subject(2)[1] is None and a.leaking == 0
    blend = assign(_unit([1, 1, 0], [0, 1, 0.05]), subjects, threshold=0.6)
    assert blend.faces[0].subject == 0 and blend.faces[0].leaks_to == [1] and blend.leaking == 1
    empty = assign(np.zeros((0, 3)), subjects, threshold=0.5)
    assert empty.faces == [] and empty.missing == [0, 1]
