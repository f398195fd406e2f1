"""Dataset directory: manifest, idempotent re-runs, captions, quality reasons, config errors."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image, ImageFilter

from comfyui_persona.core.config import ConfigError
from comfyui_persona.faces.config import PrepareConfig
from comfyui_persona.faces.dataset import prepare_dataset, read_dataset


def _mtimes(folder):
    return {p.relative_to(folder): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def photos(tmp_path, astronaut, grace_hopper, coffee):
    d = tmp_path / "photos"
    d.mkdir()
    Image.fromarray(astronaut).save(d / "astronaut.png")
    Image.fromarray(grace_hopper).save(d / "hopper.jpg", quality=95)
    Image.fromarray(coffee).save(d / "coffee.jpg", quality=95)
    return d


def test_manifest_lists_every_input_once_with_reasons(photos, tmp_path):
    result = prepare_dataset(photos, tmp_path / "ds", PrepareConfig(resolution=256))
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    sources = [e["source"] for e in manifest["photos"]]
    assert sorted(sources) == sorted(str(p) for p in photos.iterdir())
    assert len(set(sources)) == len(sources)
    coffee = next(e for e in manifest["photos"] if e["stem"] == "coffee")
    assert coffee["status"] == "rejected" and coffee["reason"] == "no face"
    astro = next(e for e in manifest["photos"] if e["stem"] == "astronaut")
    assert astro["status"] == "accepted"
    for key in ("sha256", "box", "landmarks", "scores", "caption", "matrix"):
        assert key in astro, key
    assert (tmp_path / "ds" / "astronaut.png").is_file()
    assert (tmp_path / "ds" / "astronaut.txt").read_text().strip() == "a photo of sks person"
    mask = np.asarray(Image.open(tmp_path / "ds" / "masks" / "astronaut.png"))
    assert mask.shape == (256, 256) and mask.max() == 255 and mask.min() == 0
    assert 0 < (mask > 0).mean() < 0.6  # a face-sized region, with soft edges
    assert ((mask > 10) & (mask < 245)).sum() > 100
    assert manifest["summary"] == {"photos": 3, "accepted": 2, "rejected": 1, "held_out": 0}
    assert [e["stem"] for e in result.accepted] == ["astronaut", "hopper"]
    assert [e["reason"] for e in result.rejected] == ["no face"]
    assert [i.image.name for i in read_dataset(tmp_path / "ds")] == ["astronaut.png", "hopper.png"]


def test_second_run_changes_nothing_and_a_new_photo_is_the_only_one_processed(photos, tmp_path, astronaut):
    ds = tmp_path / "ds"
    cfg = PrepareConfig(resolution=256)
    first = prepare_dataset(photos, ds, cfg)
    assert first.processed == 3
    before = _mtimes(ds)
    second = prepare_dataset(photos, ds, cfg)
    assert (second.processed, second.reused) == (0, 3)
    assert _mtimes(ds) == before
    Image.fromarray(astronaut[:, ::-1]).save(photos / "astronaut_mirrored.png")
    third = prepare_dataset(photos, ds, cfg)
    assert (third.processed, third.reused) == (1, 3)
    assert (ds / "astronaut_mirrored.png").is_file()
    assert len(json.loads((ds / "manifest.json").read_text())["photos"]) == 4
    # a removed photo's outputs go with it
    (photos / "astronaut_mirrored.png").unlink()
    fourth = prepare_dataset(photos, ds, cfg)
    assert fourth.removed and not (ds / "astronaut_mirrored.png").exists()


def test_changed_config_reprocesses(photos, tmp_path):
    ds = tmp_path / "ds"
    prepare_dataset(photos, ds, PrepareConfig(resolution=256))
    again = prepare_dataset(photos, ds, PrepareConfig(resolution=128))
    assert again.processed == 3
    assert Image.open(ds / "astronaut.png").size == (128, 128)


def test_captions_user_text_extra_text_and_missing_blip(photos, tmp_path, caplog):
    (photos / "hopper.txt").write_text("sks person in uniform, studio portrait\n")
    cfg = PrepareConfig(resolution=128, token="ohwx", class_noun="woman",
                        extra_text={"astronaut": "smiling"}, auto_caption="blip",
                        blip_model=str(tmp_path / "no-such-blip"))
    with caplog.at_level(logging.WARNING):
        result = prepare_dataset(photos, tmp_path / "ds", cfg)
    by_stem = {e["stem"]: e for e in result.entries}
    assert by_stem["hopper"]["caption"] == "sks person in uniform, studio portrait"
    assert by_stem["hopper"]["caption_source"] == "user"
    assert by_stem["astronaut"]["caption"] == "a photo of ohwx woman, smiling"
    assert by_stem["astronaut"]["caption_source"] == "template"
    assert "no-such-blip" in caplog.text and "template" in caplog.text


def test_quality_reasons(tmp_path, astronaut, grace_hopper):
    d = tmp_path / "photos"
    d.mkdir()
    Image.fromarray(astronaut).filter(ImageFilter.GaussianBlur(2)).save(d / "blurred.png")
    Image.fromarray(np.hstack([astronaut, np.asarray(Image.fromarray(grace_hopper).resize((512, 512)))])
                    ).save(d / "two_people.png")
    Image.fromarray((astronaut * 0.22).astype(np.uint8)).save(d / "dark.png")
    Image.fromarray(astronaut).save(d / "small_face.png")
    cfg = PrepareConfig(resolution=128, multiple_faces="reject", min_face_px=64)
    reasons = {e["stem"]: e.get("reason") or "" for e in prepare_dataset(d, tmp_path / "a", cfg).entries}
    assert reasons["blurred"].startswith("blurry")
    assert reasons["two_people"] == "several faces (2)"
    assert reasons["dark"].startswith("underexposed")
    # the astronaut's face has mean luminance ~0.53: a 0.45 ceiling makes it "overexposed"
    bright = PrepareConfig(resolution=128, max_brightness=0.45)
    entries = {e["stem"]: e for e in prepare_dataset(d, tmp_path / "d", bright).entries}
    assert entries["small_face"]["reason"].startswith("overexposed"), entries["small_face"]
    keep = PrepareConfig(resolution=128, multiple_faces="largest", min_face_px=100, max_yaw_deg=60)
    entries = {e["stem"]: e for e in prepare_dataset(d, tmp_path / "b", keep).entries}
    assert entries["two_people"]["faces_found"] == 2
    assert entries["small_face"]["reason"].startswith("face too small")
    strict_pose = PrepareConfig(resolution=128, max_yaw_deg=0.0)
    entries = {e["stem"]: e for e in prepare_dataset(d, tmp_path / "c", strict_pose).entries}
    assert entries["small_face"]["reason"].startswith("extreme pose")


def test_object_subject_is_cropped_without_face_detection(tmp_path, coffee):
    d = tmp_path / "photos"
    d.mkdir()
    Image.fromarray(coffee).save(d / "cup.jpg")
    cfg = PrepareConfig(subject="object", resolution=128, class_noun="cup",
                        object_crop="box", subject_boxes={"cup": [100, 50, 300, 150]})
    result = prepare_dataset(d, tmp_path / "ds", cfg)
    assert result.entries[0]["status"] == "accepted"
    out = np.asarray(Image.open(tmp_path / "ds" / "cup.png"))
    assert out.shape == (128, 128, 3)
    assert result.entries[0]["caption"] == "a photo of sks cup"
    # the mask is the subject box in the crop: the 200 x 100 px box, grown by 10 % each side
    # into a 240 px square crop (moved down to the photo's top edge), at 128 px spans
    # x 10.7-117.3 and y 26.7-80
    mask = np.asarray(Image.open(tmp_path / "ds" / "masks" / "cup.png")) > 127
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    assert abs(rows.min() - 26.7) <= 3 and abs(rows.max() + 1 - 80) <= 3
    assert abs(cols.min() - 10.7) <= 3 and abs(cols.max() + 1 - 117.3) <= 3


@pytest.mark.parametrize("data, field", [
    ({"resolution": 500}, "resolution"),
    ({"resolution": 520, "bogus_key": 1}, "bogus_key"),
    ({"caption_template": "a photo of a person"}, "caption_template"),
    ({"min_confidence": 1.5}, "min_confidence"),
    ({"border": "wrap"}, "border"),
])
def test_bad_config_names_the_field(data, field):
    with pytest.raises(ConfigError, match=field):
        PrepareConfig.from_dict(data)


def test_photos_folder_missing_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="photos folder"):
        prepare_dataset(tmp_path / "nope", tmp_path / "ds")
