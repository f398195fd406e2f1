"""Detection and alignment on real photos and their variants."""
from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

from comfyui_persona.faces.align import (alignment_matrix, apply_transform, estimate_yaw,
                                         face_template, similarity_transform)
from comfyui_persona.faces.config import PrepareConfig
from comfyui_persona.faces.dataset import prepare_dataset
from comfyui_persona.faces.detect import FaceDetector

from photo_variants import variants


@pytest.fixture(scope="module")
def variant_dataset(tmp_path_factory, astronaut, grace_hopper):
    photos = tmp_path_factory.mktemp("variants")
    for person, image in (("astronaut", astronaut), ("hopper", grace_hopper)):
        for name, pixels in variants(image).items():
            Image.fromarray(pixels).save(photos / f"{person}_{name}.png")
    cfg = PrepareConfig(resolution=512, min_face_px=20)
    result = prepare_dataset(photos, tmp_path_factory.mktemp("variants_ds"), cfg)
    return cfg, result


def test_every_variant_is_accepted(variant_dataset):
    _cfg, result = variant_dataset
    assert len(result.entries) == 14
    assert [e["stem"] for e in result.rejected] == []


def test_eye_centres_land_on_the_template_within_2px(variant_dataset):
    cfg, result = variant_dataset
    template = face_template(cfg.resolution, cfg.face_margin)
    for entry in result.accepted:
        # the landmarks recorded in full-resolution source pixels, through the recorded matrix
        mapped = apply_transform(np.array(entry["matrix"]), np.array(entry["landmarks"]))
        error = np.hypot(*(mapped[:2] - template[:2]).T)
        assert error.max() < 2.0, (entry["stem"], error)


def test_aligned_pixels_show_the_eyes_at_the_template(variant_dataset):
    """Independent check on the written pixels: MTCNN run again on every aligned image.
    MTCNN's landmark noise is about +-3 px at this face size (its O-Net sees a 48 px crop),
    so the tolerance here is 6 px; the exact 2 px check is the one above."""
    cfg, result = variant_dataset
    template = face_template(cfg.resolution, cfg.face_margin)
    detector = FaceDetector()
    for entry in result.accepted:
        pixels = np.asarray(Image.open(result.dataset_dir / entry["image"]).convert("RGB"))
        assert pixels.shape == (512, 512, 3)
        faces = detector.detect([pixels])[0]
        assert faces, entry["stem"]
        error = np.hypot(*(faces[0].landmarks[:2] - template[:2]).T)
        assert error.max() < 6.0, (entry["stem"], error)


def test_mirrored_photo_keeps_left_and_right_eyes_in_order(variant_dataset):
    _cfg, result = variant_dataset
    for entry in result.accepted:
        (lx, _), (rx, _) = entry["aligned_landmarks"][:2]
        assert lx < rx, entry["stem"]


def test_detection_is_batched_and_mapped_back_from_the_reduced_copy(astronaut):
    big = np.asarray(Image.fromarray(astronaut).resize((2048, 2048), Image.Resampling.BICUBIC))
    detector = FaceDetector()
    small_faces, big_faces = detector.detect([astronaut, astronaut])[0], detector.detect([big])[0]
    assert len(small_faces) == 1 and len(big_faces) == 1
    # the same face found at 512 px, scaled by 4, is where it is found at 2048 px
    assert np.abs(small_faces[0].landmarks * 4 - big_faces[0].landmarks).max() < 12


@pytest.mark.quick
def test_similarity_transform_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -4.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ (scale * rot).T + shift
    m = similarity_transform(src, dst)
    assert np.allclose(apply_transform(m, src), dst, atol=1e-9)


def test_yaw_estimate():
    frontal = face_template(512, 0.0)
    assert abs(estimate_yaw(frontal)) < 1.0
    turned = frontal.copy()
    iod = turned[1, 0] - turned[0, 0]
    turned[2, 0] += 0.5 * iod  # nose offset by half an inter-ocular distance: tan(yaw) = 1
    assert estimate_yaw(turned) == pytest.approx(45.0, abs=0.5)


def test_margin_and_mode_are_validated():
    with pytest.raises(ValueError, match="align_mode"):
        alignment_matrix(face_template(512, 0.5), 512, 0.5, "bogus")
    with pytest.raises(ValueError, match="face_margin"):
        face_template(512, -1.0)
