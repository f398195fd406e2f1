"""Odd and broken files: each is processed correctly or rejected with a named reason,
and the good photos still go through. Source files are never modified."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from comfyui_persona.faces.config import PrepareConfig
from comfyui_persona.faces.dataset import prepare_dataset
from comfyui_persona.faces.photos import PhotoError, file_sha256, load_photo


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory, astronaut, grace_hopper):
    d = tmp_path_factory.mktemp("odd")
    astro = Image.fromarray(astronaut)
    buf = io.BytesIO()
    astro.save(buf, "JPEG", quality=95)
    (d / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (d / "text.png").write_text("this is not an image\n")
    astro.convert("CMYK").save(d / "cmyk.jpg", quality=95)
    gray16 = (np.asarray(Image.fromarray(grace_hopper).convert("L")).astype(np.uint16) * 257)
    Image.fromarray(gray16).save(d / "gray16.png")
    rgba = astro.convert("RGBA")
    rgba.putalpha(255)
    rgba.save(d / "rgba.png")
    Image.fromarray(grace_hopper).convert("L").save(d / "gray.jpg", quality=95)
    # stored sideways, with EXIF orientation 6 ("rotate 90 degrees clockwise to display")
    exif = Image.Exif()
    exif[0x0112] = 6
    astro.rotate(90, expand=True).save(d / "exif_rotated.jpg", quality=95, exif=exif)
    Image.new("RGB", (1, 1), (128, 128, 128)).save(d / "tiny.png")
    huge = Image.new("RGB", (10000, 10000), (120, 130, 140))
    huge.paste(astro.resize((4096, 4096), Image.Resampling.BICUBIC), (3000, 3000))
    huge.save(d / "huge.jpg", quality=80)
    del huge
    astro.save(d / "good_astronaut.png")
    Image.fromarray(grace_hopper).save(d / "good_hopper.jpg", quality=95)
    # an animated GIF (the astronaut, then a grey frame) and a PNG without an extension are
    # images by their content; a notes file next to the photos is not a photo at all
    astro.save(d / "animated.gif", save_all=True, append_images=[Image.new("RGB", astro.size, (90, 90, 90))],
               duration=100, loop=0)
    Image.fromarray(grace_hopper).save(d / "no_extension", format="PNG")
    (d / "notes.txt").write_text("photos of the subject, taken 2025\n")
    return d


EXPECTED = {
    "truncated.jpg": ("rejected", "truncated"),
    "text.png": ("rejected", "not an image"),
    "cmyk.jpg": ("accepted", None),
    "gray16.png": ("accepted", None),
    "rgba.png": ("accepted", None),
    "gray.jpg": ("accepted", None),
    "exif_rotated.jpg": ("accepted", None),
    "tiny.png": ("rejected", "too small"),
    "huge.jpg": ("accepted", None),
    "good_astronaut.png": ("accepted", None),
    "good_hopper.jpg": ("accepted", None),
    "animated.gif": ("accepted", None),
    "no_extension": ("accepted", None),
}


def test_an_animated_gif_is_accepted_from_its_first_frame(odd_folder, tmp_path):
    result = prepare_dataset(odd_folder, tmp_path / "ds", PrepareConfig(resolution=128))
    gif = next(e for e in result.entries if e["source"].endswith("animated.gif"))
    assert gif["status"] == "accepted" and gif["frames"] == 2 and gif["frame_used"] == 0
    aligned = np.asarray(Image.open(tmp_path / "ds" / gif["image"]))
    assert aligned.std() > 20  # the astronaut's face, not the flat grey second frame
    assert not any(e["source"].endswith("notes.txt") for e in result.entries)


def test_each_odd_file_is_processed_or_rejected_with_a_reason(odd_folder, tmp_path):
    before = {p.name: file_sha256(p) for p in odd_folder.iterdir()}
    result = prepare_dataset(odd_folder, tmp_path / "ds", PrepareConfig(resolution=256))
    by_name = {e["source"].rsplit("/", 1)[-1]: e for e in result.entries}
    assert set(by_name) == set(EXPECTED)
    for name, (status, reason) in EXPECTED.items():
        entry = by_name[name]
        assert entry["status"] == status, (name, entry.get("reason"), entry.get("detail"))
        if reason:
            assert entry["reason"] == reason, (name, entry)
    after = {p.name: file_sha256(p) for p in odd_folder.iterdir()}
    assert before == after, "a source photo was modified"


def test_exif_orientation_is_applied(odd_folder, tmp_path):
    photo = load_photo(odd_folder / "exif_rotated.jpg")
    assert photo.exif_rotated and photo.full_size == (512, 512)
    result = prepare_dataset(odd_folder, tmp_path / "ds", PrepareConfig(resolution=256))
    entry = next(e for e in result.entries if e["stem"] == "exif_rotated")
    assert abs(entry["scores"]["roll_deg"]) < 15, entry["scores"]


def test_huge_photo_is_detected_on_a_reduced_copy(odd_folder):
    photo = load_photo(odd_folder / "huge.jpg", max_side=1024)
    assert max(photo.pixels.shape[:2]) <= 1024
    assert photo.full_size == (10000, 10000)
    assert photo.scale == pytest.approx(10000 / photo.pixels.shape[1])


def test_rgba_and_16bit_are_converted(odd_folder):
    rgba = load_photo(odd_folder / "rgba.png")
    assert rgba.pixels.shape[2] == 3 and rgba.mode == "RGBA"
    gray16 = load_photo(odd_folder / "gray16.png")
    assert gray16.pixels.dtype == np.uint8 and gray16.pixels.max() > 200  # not crushed to black


def test_too_large_is_a_named_rejection(odd_folder):
    with pytest.raises(PhotoError) as info:
        load_photo(odd_folder / "huge.jpg", max_pixels=50_000_000)
    assert info.value.reason == "too large"
