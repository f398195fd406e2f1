"""Wider crops from persona prepare, and aspect-ratio buckets in training (with SDXL's size
conditioning per image)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from comfyui_persona.core.buckets import buckets, cover_crop, nearest_bucket
from comfyui_persona.faces.config import PrepareConfig
from comfyui_persona.faces.dataset import prepare_dataset, read_dataset
from comfyui_persona.faces.samples import write_subject_photos
from comfyui_persona.trainers.loop import Callbacks, train

from trainer_helpers import tiny_config


def test_buckets_hold_sdxl_sizes_and_never_more_pixels_than_the_square():
    sdxl = buckets(1024)
    for size in [(1024, 1024), (1152, 896), (896, 1152), (1216, 832), (832, 1216), (1344, 768), (768, 1344)]:
        assert size in sdxl
    for resolution, multiple in ((1024, 64), (512, 64), (256, 64), (1024, 16), (64, 16)):
        found = buckets(resolution, multiple)
        assert (resolution, resolution) in found
        assert all(w * h <= resolution * resolution and w % multiple == 0 and h % multiple == 0 for w, h in found)
        assert all(max(w, h) / min(w, h) <= 2.5 for w, h in found)
    assert nearest_bucket(600, 900, 512) == (384, 640) and nearest_bucket(900, 600, 512) == (640, 384)
    assert nearest_bucket(500, 500, 512) == (512, 512)
    assert cover_crop(300, 200, (192, 128)) == (0.64, 0, 0)
    assert cover_crop(200, 300, (256, 256)) == (1.28, 0, 64)


@pytest.fixture(scope="module")
def cropped(tmp_path_factory):
    root = tmp_path_factory.mktemp("crops")
    write_subject_photos(root / "photos", count=4)
    cfg = PrepareConfig(resolution=256, wider_crops="both")
    return root, cfg, prepare_dataset(root / "photos", root / "dataset", cfg)


def test_prepare_writes_head_and_shoulders_and_half_body_crops_around_the_face(cropped):
    root, cfg, result = cropped
    assert len(result.accepted) == 4
    manifest = json.loads((root / "dataset" / "manifest.json").read_text())
    kinds = [c["kind"] for e in manifest["photos"] for c in e.get("crops", [])]
    assert kinds.count("head_shoulders") == 4 and kinds.count("half_body") >= 3
    for entry in manifest["photos"]:
        x1, y1, x2, y2 = entry["box"]
        width, height = entry["source_size"]
        for crop in entry.get("crops", []):
            b = crop["box"]
            assert b[0] <= x1 and b[1] <= y1 and b[2] >= x2 and b[3] >= y2, (entry["stem"], crop)  # the face inside
            assert 0 <= b[0] and 0 <= b[1] and b[2] <= width + 0.01 and b[3] <= height + 0.01
            tall = {"head_shoulders": 2.4, "half_body": 4.2}[crop["kind"]]
            assert b[3] - b[1] >= tall * (y2 - y1) - 0.01
            with Image.open(root / "dataset" / crop["image"]) as im:
                assert list(im.size) == crop["size"] and tuple(crop["size"]) in buckets(256)
            with Image.open(root / "dataset" / crop["mask"]) as m:
                mask = np.asarray(m) > 127
            face_rows = np.nonzero(mask.any(axis=1))[0]
            scale = crop["size"][1] / (b[3] - b[1])
            assert abs(face_rows.mean() - ((y1 + y2) / 2 - b[1]) * scale) < 0.15 * crop["size"][1]
            caption = (root / "dataset" / crop["caption_file"]).read_text().strip()
            assert caption == f"a photo of sks person, {cfg.crop_captions[crop['kind']]}"
    half = [c for e in manifest["photos"] for c in e.get("crops", []) if c["kind"] == "half_body"]
    assert all(c["size"][1] > c["size"][0] for c in half)  # portrait
    items = read_dataset(root / "dataset")
    assert len(items) == 4 + len(kinds) and {it.kind for it in items} == {"face", "head_shoulders", "half_body"}


def test_a_second_prepare_reuses_the_crops_and_a_removed_photo_takes_its_crops_along(cropped):
    root, cfg, _ = cropped
    again = prepare_dataset(root / "photos", root / "dataset", cfg)
    assert again.processed == 0 and again.reused == 4
    entry = again.accepted[0]
    files = [entry["image"]] + [c[k] for c in entry["crops"] for k in ("image", "caption_file", "mask")]
    photo = root / "photos" / entry["source"].split("/")[-1]
    moved = root / photo.name
    photo.rename(moved)
    try:
        prepare_dataset(root / "photos", root / "dataset", cfg)
        assert not any((root / "dataset" / f).exists() for f in files)
    finally:
        moved.rename(photo)
        prepare_dataset(root / "photos", root / "dataset", cfg)


@pytest.fixture(scope="module")
def three_shapes(tmp_path_factory, astronaut):
    """A kohya folder: a square, a portrait and a landscape image of the same subject."""
    root = tmp_path_factory.mktemp("shapes")
    photo = Image.fromarray(astronaut)
    for name, box in (("square", (0, 0, 512, 512)), ("portrait", (100, 0, 400, 450)), ("landscape", (0, 50, 512, 390))):
        photo.crop(box).save(root / f"{name}.png")
        (root / f"{name}.txt").write_text(f"a photo of sks person, {name}")
    return root


def test_images_of_three_aspect_ratios_land_in_their_buckets_and_train(tiny_sdxl, three_shapes, tmp_path):
    """Every SDXL forward sees the size conditioning of its own images: their original size,
    their crop, and the bucket they train at."""
    from comfyui_persona.models.families import get_family
    from comfyui_persona.trainers.loop.data import bucket_groups

    cfg = tiny_config(tiny_sdxl, three_shapes, tmp_path / "run", family="sdxl", resolution=256, steps=8,
                      cache_latents="disk")
    items = read_dataset(three_shapes)
    groups = bucket_groups(items, cfg, get_family("sdxl"))
    names = {size: sorted(items[i].image.stem for i in idx) for size, idx in groups.items()}
    assert names == {(256, 256): ["square"], (192, 320): ["portrait"], (320, 192): ["landscape"]}
    originals = {(512, 512), (450, 300), (340, 512)}  # (height, width)
    from comfyui_persona.models.loading import load_components

    factor = 256 / get_family("sdxl").latent_shape(load_components("sdxl", tiny_sdxl), 256)[1]
    seen = []

    def hook(_module, args, kwargs):
        latents, ids = args[0], kwargs["added_cond_kwargs"]["time_ids"]
        for row in ids.float().tolist():
            seen.append(row)
            assert row[4] / latents.shape[-2] == row[5] / latents.shape[-1] == factor  # the bucket trained
            assert (row[0], row[1]) in originals

    def on_start(info):
        info["denoiser"].register_forward_pre_hook(hook, with_kwargs=True)

    result = train(cfg, Callbacks(on_start=on_start))
    assert result.steps_done == 8 and all(math.isfinite(r["loss"]) for r in result.records)
    assert {(r[4], r[5]) for r in seen} == {(256, 256), (320, 192), (192, 320)}  # every bucket trained
    assert [0.0, 0.0] != sorted({(r[2], r[3]) for r in seen})[-1]  # a crop offset where one was cut
    cache = sorted(p.name for p in (tmp_path / "run" / "cache").iterdir())
    assert cache == ["latents-192x320.safetensors", "latents-320x192.safetensors", "latents.safetensors"]


def test_buckets_off_crops_every_image_to_the_square(tiny_model, three_shapes, tmp_path):
    from comfyui_persona.models.families import get_family
    from comfyui_persona.trainers.loop.data import bucket_groups

    cfg = tiny_config(tiny_model, three_shapes, tmp_path / "run", resolution=128, aspect_buckets=False)
    assert list(bucket_groups(read_dataset(three_shapes), cfg, get_family("sd15"))) == [(128, 128)]


def test_masked_loss_and_prior_preservation_train_across_buckets(tiny_sdxl, cropped, tmp_path):
    root, _, _ = cropped
    cfg = tiny_config(tiny_sdxl, root / "dataset", tmp_path / "run", family="sdxl", resolution=256, steps=2,
                      masked_loss=True,
                      prior_preservation=True, num_class_images=1, class_images_steps=1)
    result = train(cfg)
    assert result.steps_done == 2 and all(math.isfinite(r["loss"]) and "loss_prior" in r for r in result.records)


def test_the_planner_plans_the_square_which_no_bucket_exceeds(tiny_model):
    """The memory plan simulates the square resolution: buckets hold at most as many pixels,
    so a plan that fits the square fits the largest bucket."""
    from comfyui_persona.models.families import get_family

    for family in ("sd15", "sdxl", "flux"):
        multiple = get_family(family).bucket_multiple
        for resolution in (512, 768, 1024):
            assert max(w * h for w, h in buckets(resolution, multiple)) == resolution * resolution
