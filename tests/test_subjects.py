"""Faces matched to subjects one to one, with leakage."""
from __future__ import annotations

import numpy as np
import pytest

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


def _pair(left, right, height=256):
    """Two photos side by side, each scaled to ``height`` (a picture of two people)."""
    from PIL import Image

    parts = [Image.fromarray(p) for p in (left, right)]
    parts = [p.resize((int(p.width * height / p.height), height)) for p in parts]
    canvas = Image.new("RGB", (sum(p.width for p in parts), height))
    canvas.paste(parts[0], (0, 0))
    canvas.paste(parts[1], (parts[0].width, 0))
    return np.asarray(canvas)


def test_every_face_of_a_real_group_photo_is_embedded_and_matched_to_its_person(astronaut, grace_hopper):
    from comfyui_persona.faces.identity import Reference, get_embedder
    from comfyui_persona.faces.subjects import embed_each_face, score_group

    emb = get_embedder("dlib")
    picture = _pair(astronaut, grace_hopper)
    boxes, faces = embed_each_face(emb, picture)
    assert len(boxes) == 2 and all(faces.found)
    subjects = np.stack([Reference(emb.embed([p])).mean for p in (grace_hopper, astronaut)])
    group = score_group(emb, picture, subjects, emb.threshold)
    # subject 0 (Hopper) is the face on the right, subject 1 (the astronaut) the one on the left
    right = int(np.argmax(boxes[:, 0]))
    assert {m.face: m.subject for m in group.assignment.faces} == {right: 0, 1 - right: 1}
    assert all(s > 0.95 for s in group.scores) and group.assignment.leaking == 0
    assert group.to_json(["hopper", "astronaut"])["missing"] == []


def test_the_group_gate_passes_only_when_every_subject_is_in_the_picture(astronaut, grace_hopper, coffee):
    from comfyui_persona.faces.identity import get_embedder
    from comfyui_persona.generation.gate import GateSettings, gated_generate_group

    pictures = [coffee, _pair(astronaut, astronaut), _pair(grace_hopper, astronaut)]
    result = gated_generate_group(lambda p: pictures[p["seed"]], get_embedder("dlib"), [[astronaut], [grace_hopper]],
                                  {"seed": 0}, GateSettings(max_attempts=3), names=["eileen", "grace"])
    reasons = [a.reason for a in result.attempts]
    assert reasons == ["faceless", "missing grace", None] and result.passed and result.best_index == 3
    second = result.attempts[1].subjects
    assert second["missing"] == ["grace"] and second["faces"] == 2
    assert second["matches"][0]["subject"] == "eileen" or second["matches"][1]["subject"] == "eileen"
    assert result.attempts[1].score == -1.0  # a missing subject counts as the lowest cosine
    assert set(result.attempts[2].subjects["subjects"]) == {"eileen", "grace"}
    assert result.attempts[0].to_json()["subjects"]["faces"] == 0
    with pytest.raises(ValueError, match="two or more"):
        gated_generate_group(lambda p: coffee, get_embedder("dlib"), [[astronaut]], {"seed": 0})
    with pytest.raises(ValueError, match="grace.*no face"):
        gated_generate_group(lambda p: coffee, get_embedder("dlib"), [[astronaut], [coffee]], {"seed": 0},
                             names=["eileen", "grace"])


def test_group_metrics_report_each_subject_and_persona_eval_takes_subjects(astronaut, grace_hopper, tmp_path, capsys):
    from PIL import Image

    from comfyui_persona.app.cli import main
    from comfyui_persona.metrics.group import group_rows

    images = [_pair(astronaut, grace_hopper), _pair(astronaut, astronaut)]
    rows = {r.metric: r for r in group_rows(images, {"eileen": [astronaut], "grace": [grace_hopper]})}
    assert rows["faces per image"].value == 2.0
    assert rows["eileen: present"].value == 1.0 and rows["grace: present"].value == 0.5
    assert rows["grace: identity cosine"].value > 0.95
    assert rows["identity leakage"].value == 0.0
    assert rows["strangers"].value == 0.25  # the second astronaut of the second picture matches no one left
    for folder, picture in (("gen", images[0]), ("eileen", astronaut), ("grace", grace_hopper)):
        (tmp_path / folder).mkdir()
        Image.fromarray(picture).save(tmp_path / folder / "a.png")
    code = main(["eval", "--generated", str(tmp_path / "gen"), "--subject", f"eileen={tmp_path / 'eileen'}",
                 "--subject", f"grace={tmp_path / 'grace'}", "--out", str(tmp_path / "report")])
    out = capsys.readouterr().out
    assert code == 0 and "grace: identity cosine" in out and "identity leakage" in out
    assert main(["eval", "--generated", str(tmp_path / "gen"), "--subject", "eileen"]) == 2
    assert "NAME=FOLDER" in capsys.readouterr().err
