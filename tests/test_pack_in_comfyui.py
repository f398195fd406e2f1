"""The pack inside a real ComfyUI server: registration, tooltips, import, a queued prompt,
and a missing optional package."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

import comfyui_persona
from comfy_server import PACK_FOLDER, ComfyServer

pytestmark = pytest.mark.server


def face_align_prompt(image_name: str, sink: str) -> dict:
    """LoadImage -> Persona Face Align (256 px) -> ``sink`` (SaveImage or PreviewImage)."""
    sink_inputs = {"images": ["2", 0]}
    if sink == "SaveImage":
        sink_inputs["filename_prefix"] = "persona_foundation"
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image_name}},
        "2": {"class_type": "PersonaFaceAlign", "inputs": {
            "images": ["1", 0], "subject": "face", "resolution": 256, "face_margin": 0.6,
            "align_mode": "eyes", "border": "reflect", "multiple_faces": "largest",
            "min_confidence": 0.95, "min_face_px": 64, "min_sharpness": 15.0, "max_yaw_deg": 60.0,
            "white_balance": False, "clahe": False, "contrast": False, "denoise": False}},
        "3": {"class_type": sink, "inputs": sink_inputs},
    }


def test_every_node_is_listed_with_category_and_tooltips(comfy):
    info = comfy.get("/object_info")
    assert comfyui_persona.NODE_CLASS_MAPPINGS, "the pack registers no node"
    for node_id, cls in comfyui_persona.NODE_CLASS_MAPPINGS.items():
        assert node_id.startswith("Persona"), node_id
        assert node_id in info, f"{node_id} is not listed by /object_info"
        entry = info[node_id]
        assert entry["category"].startswith("Persona/"), (node_id, entry["category"])
        assert entry["display_name"] == comfyui_persona.NODE_DISPLAY_NAME_MAPPINGS[node_id]
        inputs = {**entry["input"].get("required", {}), **entry["input"].get("optional", {})}
        assert inputs, f"{node_id} has no inputs"
        for name, spec in inputs.items():
            assert len(spec) > 1 and spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"


def test_server_log_shows_the_pack_imported_without_error(comfy):
    log = comfy.log()
    pack_lines = [line for line in log.splitlines()
                  if "seconds" in line and line.rstrip().endswith(f"custom_nodes/{PACK_FOLDER}")]
    assert pack_lines, "the import-times table does not list the pack:\n" + log[-3000:]
    assert all("IMPORT FAILED" not in line for line in pack_lines), pack_lines
    assert f"Cannot import {comfy.root / 'custom_nodes' / PACK_FOLDER}" not in log
    # the start-up log up to the import-times table: no traceback of the pack (the current host
    # logs its own audio nodes failing without torchaudio, which this environment leaves out)
    startup = log.split("Import times for custom nodes")[0]
    tracebacks = startup.split("Traceback (most recent call last):")[1:]
    assert not [t for t in tracebacks if PACK_FOLDER in t or "comfyui_persona" in t], startup[-3000:]
    # and no deprecation warning about the pack's nodes (their schema, inputs or types)
    warned = [line for line in startup.splitlines() if "deprecat" in line.lower()
              and any(k in line for k in ("Persona", PACK_FOLDER, "comfyui_persona"))]
    assert warned == [], warned


@pytest.mark.quick
def test_prompt_with_a_pack_node_runs_and_lands_in_history(comfy, astronaut):
    Image.fromarray(astronaut).save(comfy.input_dir / "persona_astronaut.png")
    prompt = face_align_prompt("persona_astronaut.png", "SaveImage")
    entry = comfy.run_prompt(prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    images = entry["outputs"]["3"]["images"]
    assert len(images) == 1
    saved = comfy.output_dir / images[0].get("subfolder", "") / images[0]["filename"]
    with Image.open(saved) as im:
        assert im.size == (256, 256)


@pytest.fixture(scope="module")
def comfy_without_facenet(tmp_path_factory):
    """A second real server started with facenet-pytorch made unimportable."""
    hide = Path(__file__).parent / "hide_modules"
    env = {"PERSONA_HIDE_MODULES": "facenet_pytorch",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(hide), os.environ.get("PYTHONPATH")]))}
    server = ComfyServer.create(tmp_path_factory.mktemp("comfy-nofacenet"), "comfyui-no-facenet", env)
    server.start()
    yield server
    server.stop()


def test_missing_optional_package_disables_only_the_node_that_needs_it(comfy_without_facenet, astronaut):
    server = comfy_without_facenet
    info = server.get("/object_info")
    for node_id in comfyui_persona.NODE_CLASS_MAPPINGS:
        assert node_id in info, f"{node_id} vanished when facenet-pytorch is missing"
    assert "IMPORT FAILED" not in server.log()

    Image.fromarray(astronaut).save(server.input_dir / "persona_astronaut.png")
    prompt = face_align_prompt("persona_astronaut.png", "PreviewImage")
    entry = server.run_prompt(prompt)
    assert entry["status"]["status_str"] == "error"
    errors = [m for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert errors, entry["status"]
    message = errors[0][1]["exception_message"]
    assert "facenet-pytorch" in message and "pip install" in message, message
    # a node that does not need it still works on the same server
    photos = server.input_dir / "persona" / "photos"
    photos.mkdir(parents=True)
    Image.fromarray(astronaut).save(photos / "a.png")
    entry = server.run_prompt({
        "1": {"class_type": "PersonaLoadPhotos", "inputs": {"folder": "persona/photos", "max_side": 1024}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    })
    assert entry["status"]["status_str"] == "success", entry["status"]
