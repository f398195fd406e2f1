"""persona calibrate: the equal-error threshold of a user's own same-person and
different-person photos, and the gate using it."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from comfyui_persona.app.cli import main
from comfyui_persona.faces.calibration import equal_error, pair_scores, roc
from comfyui_persona.faces.identity import calibrated_threshold, get_embedder

from photo_variants import variants


def test_roc_and_equal_error_on_known_scores():
    genuine = np.array([0.9, 0.8, 0.7, 0.4])
    impostor = np.array([0.1, 0.2, 0.3, 0.6])
    thresholds, far, frr = roc(genuine, impostor)
    assert far[0] == 1.0 and frr[0] == 0.0 and far[-1] == 0.0 and frr[-1] == 0.75
    threshold, rate = equal_error(genuine, impostor)
    assert threshold == pytest.approx(0.5) and rate == pytest.approx(0.25)  # one error each side
    threshold, rate = equal_error(np.array([0.9, 0.8]), np.array([0.1, 0.2]))
    assert 0.2 < threshold <= 0.8 and rate == 0.0  # separable: no errors
    with pytest.raises(ValueError, match="genuine pairs"):
        equal_error(np.array([]), impostor)
    v = np.eye(3)[[0, 0, 1]]
    same, different = pair_scores(v, ["a", "a", "b"])
    assert same.tolist() == [1.0] and different.tolist() == [0.0, 0.0]


def test_calibrate_separates_two_people_and_the_gate_uses_the_saved_threshold(tmp_path, monkeypatch, astronaut,
                                                                              grace_hopper, capsys):
    monkeypatch.setenv("PERSONA_CACHE", str(tmp_path / "cache"))
    for name, photo in (("eileen", astronaut), ("grace", grace_hopper)):
        (tmp_path / "people" / name).mkdir(parents=True)
        for kind in ("original", "mirrored", "rotated-20", "scaled0.5"):
            Image.fromarray(variants(photo)[kind]).save(tmp_path / "people" / name / f"{kind}.png")
    (tmp_path / "people" / "grace" / "blank.png").write_bytes(b"not an image")
    assert calibrated_threshold("dlib") == 0.91
    assert main(["calibrate", str(tmp_path / "people"), "--out", str(tmp_path / "cal.json"), "--save"]) == 0
    out = capsys.readouterr().out
    cal = json.loads((tmp_path / "cal.json").read_text())
    assert cal["genuine_pairs"] == 12 and cal["impostor_pairs"] == 16 and cal["equal_error_rate"] == 0.0
    assert cal["skipped"] and "blank.png" in cal["skipped"][0]
    embedder = get_embedder("dlib")
    assert calibrated_threshold("dlib") == cal["threshold"] == embedder.threshold != 0.91
    assert "saved:" in out
    # the threshold separates the people: every genuine pair above, every impostor below
    from comfyui_persona.faces.photos import load_folder

    vecs, labels = [], []
    for name in ("eileen", "grace"):
        photos, _ = load_folder(tmp_path / "people" / name)
        emb = embedder.embed([p.pixels for p in photos])
        vecs.append(emb.vectors)
        labels += [name] * len(photos)
    genuine, impostor = pair_scores(np.concatenate(vecs), labels)
    assert genuine.min() > cal["threshold"] > impostor.max()
    assert main(["calibrate", str(tmp_path / "people" / "eileen")]) == 2
    assert "two or more people" in capsys.readouterr().err
