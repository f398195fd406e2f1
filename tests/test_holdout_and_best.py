"""Held-out photos, the copy-paste score, and the best checkpoint chosen by identity."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from comfyui_persona.faces.config import PrepareConfig
from comfyui_persona.faces.dataset import prepare_dataset, read_dataset
from comfyui_persona.faces.identity import Embeddings, copy_paste
from comfyui_persona.faces.samples import write_subject_photos
from comfyui_persona.trainers.loop import train
from comfyui_persona.trainers.outputs.best import Best, selection_score

from trainer_helpers import tiny_config


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    root = tmp_path_factory.mktemp("holdout")
    write_subject_photos(root / "photos", count=5)
    result = prepare_dataset(root / "photos", root / "dataset", PrepareConfig(resolution=64, holdout=2))
    return root, result


def test_prepare_holds_photos_out_and_marks_them_in_the_manifest(held_out):
    root, result = held_out
    manifest = json.loads((root / "dataset" / "manifest.json").read_text())
    held = sorted(e["stem"] for e in manifest["photos"] if e.get("holdout"))
    accepted = sorted(e["stem"] for e in manifest["photos"] if e["status"] == "accepted")
    assert held == accepted[-2:] and manifest["summary"]["held_out"] == 2
    assert all((root / "dataset" / e["image"]).is_file() for e in manifest["photos"] if e.get("holdout"))
    assert sorted(it.image.stem for it in read_dataset(root / "dataset")) == accepted[:-2]
    assert sorted(it.image.stem for it in read_dataset(root / "dataset", holdout=True)) == held
    # choosing other photos reprocesses nothing; an unknown stem or holding out all is refused
    again = prepare_dataset(root / "photos", root / "dataset", PrepareConfig(resolution=64, holdout=[accepted[0]]))
    assert again.processed == 0
    assert [it.image.stem for it in read_dataset(root / "dataset", holdout=True)] == [accepted[0]]
    with pytest.raises(ValueError, match="holdout.*'nobody'"):
        prepare_dataset(root / "photos", root / "dataset", PrepareConfig(resolution=64, holdout=["nobody"]))
    with pytest.raises(ValueError, match="leaves none to train on"):
        prepare_dataset(root / "photos", root / "dataset", PrepareConfig(resolution=64, holdout=5))
    prepare_dataset(root / "photos", root / "dataset", PrepareConfig(resolution=64, holdout=2))


def test_held_out_photos_never_reach_the_data_the_loop_sees(held_out, tiny_model, tmp_path):
    from comfyui_persona.trainers.loop.data import prepare_data
    from comfyui_persona.trainers.loop.setup import setup

    root, _ = held_out
    cfg = tiny_config(tiny_model, root / "dataset", tmp_path / "run")
    cfg.check_paths()
    data = prepare_data(setup(cfg, resume=False))
    seen = torch.cat([g.latent_mean for g in data.instance])
    assert len(seen) == 3
    from comfyui_persona.trainers.loop.prior import load_images

    held = [it.image for it in read_dataset(root / "dataset", holdout=True)]
    trained = [it.image for it in read_dataset(root / "dataset")]
    held_px, trained_px = load_images(held, 64), load_images(trained, 64)
    assert not any(torch.equal(h, t) for h in held_px for t in trained_px)  # distinct photos


def _emb(*vectors):
    v = np.array(vectors, np.float32)
    return Embeddings(v / np.linalg.norm(v, axis=1, keepdims=True), [True] * len(vectors))


def test_copy_paste_scores_a_copy_high_and_a_held_out_photo_low():
    train = _emb([1, 0, 0], [0.8, 0.6, 0])
    holdout = _emb([0.6, 0, 0.8], [0.7, 0.1, 0.7])
    generated = _emb([1, 0, 0], [0.6, 0, 0.8], [0.8, 0.3, 0.5])
    scores = copy_paste(generated, train, holdout)
    assert scores[0] == pytest.approx(1 - max(0.6, 0.7 / np.linalg.norm([0.7, 0.1, 0.7])), abs=1e-5)
    assert scores[0] > 0.25  # an exact training photo: a copy
    assert scores[1] < 0  # a held-out photo itself: nearer the unseen photos
    faceless = Embeddings(generated.vectors, [True, False, True])
    assert np.isnan(copy_paste(faceless, train, holdout)[1])


def test_best_selection_follows_the_documented_rule(tmp_path):
    assert selection_score({"identity": [0.5, None]}) == 0.25  # faceless counts 0
    assert selection_score({"identity": [0.9], "identity_holdout": [0.6, 0.4], "copy_paste_mean": 0.1}) == 0.4
    assert selection_score({"identity": [0.9], "identity_holdout": [0.6], "copy_paste_mean": -0.2}) == 0.6
    assert selection_score({}) is None
    best = Best(tmp_path)
    infos = {100: [0.5], 200: [0.7], 300: [0.7], 400: [0.6]}
    picked = [step for step, ids in infos.items() if best.consider(step, {"identity_holdout": ids})]
    assert picked == [100, 200] and best.step == 200  # a tie keeps the earlier step
    best.write({"identity_holdout": [0.7]}, [])
    assert Best(tmp_path).step == 200 and Best(tmp_path).score == 0.7


def test_validation_scores_held_out_identity_and_keeps_the_best_lora(held_out, tiny_model, tmp_path):
    root, _ = held_out
    result = train(tiny_config(tiny_model, root / "dataset", tmp_path / "run", steps=3, validate_every=1,
                               validation_steps=2))
    log = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    checks = [r["validation"] for r in log if "validation" in r]
    assert len(checks) == 3
    for info in checks:
        assert "identity_holdout" in info and "copy_paste_mean" in info and "selection_score" in info
    # the tiny model draws no face: every step scores 0, so the first stays the best
    assert [c["selection_score"] for c in checks] == [0.0, 0.0, 0.0]
    assert result.best_step == 1 and result.best_path == tmp_path / "run" / "best" / "lora.safetensors"
    record = json.loads((tmp_path / "run" / "best" / "best.json").read_text())
    assert record["step"] == 1 and "held-out" in record["rule"]
    assert result.best_path.is_file() and result.lora_path.is_file()
