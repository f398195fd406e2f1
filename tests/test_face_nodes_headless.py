"""The face nodes' own execute() outside ComfyUI (they import no ComfyUI module at load)."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from comfyui_persona.nodes.face_nodes import PersonaFaceAlign, PersonaLoadPhotos


def test_load_photos_reports_unreadable_files_and_keeps_the_rest(tmp_path, astronaut, grace_hopper):
    Image.fromarray(astronaut).save(tmp_path / "a.png")
    Image.fromarray(grace_hopper).save(tmp_path / "b.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    images, names, report = PersonaLoadPhotos().execute(str(tmp_path), 1024)
    assert names == ["a.png", "b.jpg"]
    assert [tuple(im.shape) for im in images] == [(1, 512, 512, 3), (1, 600, 512, 3)]
    skipped = json.loads(report)["skipped"]
    assert [s["file"].rsplit("/", 1)[-1] for s in skipped] == ["broken.jpg"]
    assert skipped[0]["reason"] in ("unreadable", "truncated", "not an image")


def test_load_photos_with_nothing_readable_is_a_clear_error(tmp_path):
    (tmp_path / "x.png").write_text("nope")
    with pytest.raises(ValueError, match="no readable photo"):
        PersonaLoadPhotos().execute(str(tmp_path), 1024)


def test_face_align_takes_a_list_of_differently_sized_images(astronaut, grace_hopper, coffee):
    batch = [torch.from_numpy(im[None].astype("float32") / 255) for im in (astronaut, grace_hopper, coffee)]
    widgets = {k: [v[1]["default"]] for k, v in PersonaFaceAlign.INPUT_TYPES()["required"].items() if k != "images"}
    widgets["resolution"] = [128]
    aligned, masks, report = PersonaFaceAlign().execute(batch, **widgets)
    assert tuple(aligned.shape) == (2, 128, 128, 3) and tuple(masks.shape) == (2, 128, 128)
    assert "no face" in report
