"""Identity embedders on real photos, the trainer's identity loss, and validation scores."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from comfyui_persona.core.config import ConfigError
from comfyui_persona.faces.identity import NoFaceError, get_embedder, identity_scores, reference_embedding
from comfyui_persona.trainers.loop.identity_loss import face_box_latent
from comfyui_persona.trainers.loop import train
from comfyui_persona.trainers.outputs.run_dir import read_log
from comfyui_persona.core.weights import WeightsNotFound

from trainer_helpers import tiny_config


def test_dlib_same_person_scores_above_threshold_and_others_below(astronaut, grace_hopper, coffee):
    embedder = get_embedder("dlib")
    variants = [cv2.resize(astronaut, None, fx=1.6, fy=1.6), np.ascontiguousarray(astronaut[:, ::-1]),
                cv2.resize(astronaut, None, fx=0.7, fy=0.7)]
    scores, found = identity_scores(embedder, variants + [grace_hopper, coffee], [astronaut])
    assert found == [True, True, True, True, False]
    assert all(s >= embedder.threshold for s in scores[:3]), scores
    assert scores[3] < embedder.threshold < min(scores[:3]), scores
    assert np.isnan(scores[4])
    unit = embedder.embed([astronaut]).vectors
    assert np.allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)


def test_reference_modes_and_errors(astronaut, grace_hopper, coffee):
    embedder = get_embedder("dlib")
    refs = [astronaut, np.ascontiguousarray(astronaut[:, ::-1])]
    ref = reference_embedding(embedder, refs)
    assert np.linalg.norm(ref) == pytest.approx(1.0)
    mean_ref, _ = identity_scores(embedder, [astronaut], refs, "mean_reference")
    best, _ = identity_scores(embedder, [astronaut], refs, "max")
    avg, _ = identity_scores(embedder, [astronaut], refs, "mean")
    assert best[0] >= avg[0] and best[0] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(NoFaceError, match="reference"):
        reference_embedding(embedder, [coffee])
    with pytest.raises(ValueError, match="empty"):
        reference_embedding(embedder, [])


def test_missing_facenet_weights_name_the_file_and_the_places(monkeypatch, tmp_path):
    monkeypatch.setenv("PERSONA_WEIGHTS", str(tmp_path / "weights"))
    from comfyui_persona.faces import identity

    identity.facenet_model.cache_clear()
    with pytest.raises(WeightsNotFound) as info:
        identity.facenet_model("vggface2", "cpu")
    message = str(info.value)
    assert "20180402-114759-vggface2.pt" in message and str(tmp_path / "weights") in message
    assert "https://" in message


def test_face_box_is_a_part_of_the_latent(face_dataset):
    from comfyui_persona.faces.dataset import read_dataset

    box = face_box_latent([it.mask for it in read_dataset(face_dataset)], 64)
    x0, y0, x1, y1 = box
    assert 0 <= x0 < x1 <= 8 and 0 <= y0 < y1 <= 8
    assert (x1 - x0) * (y1 - y0) < 64  # less than the whole 8x8 latent


def test_identity_loss_enters_the_gradient(tiny_model, face_dataset, tmp_path):
    common = dict(steps=2, identity_weights="random", identity_max_timestep=1000, rank=4)
    plain = train(tiny_config(tiny_model, face_dataset, tmp_path / "plain", **common))
    with_id = train(tiny_config(tiny_model, face_dataset, tmp_path / "id", identity_loss_weight=50.0, **common))
    records = read_log(tmp_path / "id")
    assert all("loss_identity" in r and r["identity_samples"] == 1 for r in records)
    assert all(r["loss"] == pytest.approx(r["loss_instance"] + 50.0 * r["loss_identity"], rel=1e-4)
               for r in records)
    a, b = load_file(str(plain.lora_path)), load_file(str(with_id.lora_path))
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_identity_loss_needs_face_masks(tiny_model, tmp_path, astronaut):
    from PIL import Image

    plain = tmp_path / "kohya"
    plain.mkdir()
    Image.fromarray(cv2.resize(astronaut, (64, 64))).save(plain / "a.png")
    (plain / "a.txt").write_text("a photo of sks person")
    with pytest.raises(ConfigError, match="identity_loss_weight"):
        train(tiny_config(tiny_model, plain, tmp_path / "run", identity_loss_weight=1.0,
                          identity_weights="random"))


def test_validation_writes_a_grid_and_identity_scores(tiny_model, face_dataset, tmp_path):
    train(tiny_config(tiny_model, face_dataset, tmp_path / "run", steps=2, validate_every=2,
                      validation_steps=2, validation_seeds=[0, 1]))
    records = [r for r in read_log(tmp_path / "run") if "validation" in r]
    assert len(records) == 1
    info = records[0]["validation"]
    assert (tmp_path / "run" / "samples" / "step-000002.png").is_file()
    assert info["images"] == 2 and info["identity_embedder"] == "dlib"
    # a random-weight model draws no faces: counted as faceless, never scored as zero
    assert info["faceless"] == 2 and info["identity"] == [None, None]


def _tiny_arcface_onnx(path):
    """A small network with ArcFace's interface (N x 3 x 112 x 112 -> N x 512), random weights."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4),
                              torch.nn.Flatten(), torch.nn.Linear(128, 512)).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(net, torch.zeros(1, 3, 112, 112), str(path), input_names=["input.1"],
                      output_names=["embedding"], dynamic_axes={"input.1": {0: "n"}, "embedding": {0: "n"}}, dynamo=False)
    return net


def test_arcface_is_found_in_the_insightface_folder_and_embeds_aligned_crops(monkeypatch, tmp_path, astronaut, coffee):
    from comfyui_persona.faces.detect import FaceDetector
    from comfyui_persona.faces.identity import ArcFaceEmbedder

    monkeypatch.setenv("PERSONA_WEIGHTS", str(tmp_path / "weights"))
    with pytest.raises(WeightsNotFound, match="w600k_r50.onnx"):
        ArcFaceEmbedder()
    net = _tiny_arcface_onnx(tmp_path / "weights" / "insightface" / "models" / "buffalo_l" / "w600k_r50.onnx")
    embedder = ArcFaceEmbedder()
    emb = embedder.embed([astronaut, coffee])
    assert emb.found == [True, False]
    assert np.linalg.norm(emb.vectors[0]) == pytest.approx(1.0, abs=1e-5)
    # the ONNX session sees exactly the 112 px template-aligned crop, normalised to -1..1
    face = FaceDetector().detect([astronaut])[0][0]
    crop = ArcFaceEmbedder.crop(astronaut, face.landmarks)
    assert crop.shape == (112, 112, 3)
    with torch.no_grad():
        expected = net(torch.from_numpy((crop.astype(np.float32) - 127.5) / 127.5).permute(2, 0, 1)[None])
    expected = torch.nn.functional.normalize(expected, dim=1).numpy()[0]
    assert np.allclose(emb.vectors[0], expected, atol=1e-4)


def test_clip_embedder_needs_no_face_and_is_deterministic(coffee, astronaut, monkeypatch, tmp_path):
    from comfyui_persona.faces.identity import ClipImageEmbedder

    monkeypatch.setenv("PERSONA_WEIGHTS", str(tmp_path / "weights"))
    with pytest.raises(WeightsNotFound, match="ViT-B-32"):
        ClipImageEmbedder()
    embedder = ClipImageEmbedder(weights="random")
    a, b = embedder.embed([coffee, astronaut]), embedder.embed([coffee, astronaut])
    assert a.found == [True, True] and a.vectors.shape == (2, 512)
    assert np.allclose(a.vectors, b.vectors) and np.allclose(np.linalg.norm(a.vectors, axis=1), 1.0, atol=1e-5)
