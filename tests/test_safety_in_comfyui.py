"""Safe on a shared server, in the real ComfyUI: hostile path and name values queued through
POST /prompt are refused and nothing outside ComfyUI's folders is read or written; the
Persona Save Image node writes watermarked files with Persona's record that persona verify
accepts."""
from __future__ import annotations

import json

import pytest
from PIL import Image

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def outside(tmp_path_factory, comfy, astronaut):
    """A folder outside ComfyUI holding a photo, and a symlink to it inside input/."""
    secret = tmp_path_factory.mktemp("outside-comfyui")
    Image.fromarray(astronaut).save(secret / "private.png")
    link = comfy.input_dir / "persona_link_out"
    if not link.exists():
        link.symlink_to(secret, target_is_directory=True)
    Image.fromarray(astronaut).save(comfy.input_dir / "persona_reference.png")
    return secret


HOSTILE_FOLDERS = ["/etc", "{outside}", "~", "../../..", "persona_link_out", "persona/photos\x00/etc",
                   "a" * 5000]
HOSTILE_NAMES = ["../../escaped", "/tmp/escaped", "..", "a\x00b", "x" * 5000, "sub/dir", ""]


def _error(entry) -> str:
    assert entry["status"]["status_str"] == "error", entry["status"]
    return json.dumps(entry["status"]["messages"])


@pytest.mark.parametrize("folder", HOSTILE_FOLDERS)
def test_load_photos_refuses_paths_outside_comfyui(comfy, outside, folder):
    graph = {"1": {"class_type": "PersonaLoadPhotos",
                   "inputs": {"folder": folder.format(outside=outside), "max_side": 512}},
             "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    message = _error(comfy.run_prompt(graph))
    assert "folder:" in message, message
    assert "private.png" not in message  # nothing from outside was listed or read


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_name_inputs_refuse_anything_but_a_plain_name(comfy, outside, tmp_path, name):
    before = {p.name for p in tmp_path.parent.iterdir()}
    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": "persona_reference.png"}},
             "2": {"class_type": "PersonaMetricsPanel", "inputs": {
                 "generated": ["1", 0], "reference": ["1", 0], "prompts": "", "embedder": "dlib",
                 "lpips_net": "alex", "report_name": name}}}
    assert "report_name: a plain name is needed" in _error(comfy.run_prompt(graph))
    graph = {"1": {"class_type": "PersonaBuildDataset", "inputs": {
        "photos_folder": "persona_link_out", "dataset_name": name, **_dataset_widgets()}}}
    message = _error(comfy.run_prompt(graph))
    assert "dataset_name: a plain name is needed" in message or "photos_folder:" in message
    assert {p.name for p in tmp_path.parent.iterdir()} == before
    assert not (comfy.output_dir.parent / "escaped").exists() and not (comfy.root / "escaped").exists()


def test_build_dataset_refuses_a_consent_file_outside_input(comfy, outside):
    graph = {"1": {"class_type": "PersonaBuildDataset", "inputs": {
        "photos_folder": "persona/photos", "dataset_name": "consent_probe", "consent_file": "/etc/passwd",
        **_dataset_widgets()}}}
    assert "consent_file:" in _error(comfy.run_prompt(graph))


def test_save_node_writes_files_that_persona_verify_accepts(comfy, outside):
    from comfyui_persona.provenance.verify import verify

    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": "persona_reference.png"}},
             "2": {"class_type": "PersonaSaveImage", "inputs": {
                 "images": ["1", 0], "filename_prefix": "persona/saved", "format": "png", "watermark": True,
                 "lora_file": ""}},
             "3": {"class_type": "PersonaSaveImage", "inputs": {
                 "images": ["1", 0], "filename_prefix": "persona/unmarked", "format": "jpg", "watermark": False,
                 "lora_file": ""}}}
    entry = comfy.run_prompt(graph)
    assert entry["status"]["status_str"] == "success", entry["status"]
    saved = entry["outputs"]["2"]["images"][0]
    report = verify(comfy.output_dir / saved["subfolder"] / saved["filename"])
    assert report["status"] == "ok" and report["watermark"]["found"]
    assert report["record"]["ai_generated"] and report["record"]["content_credentials"]["signed"] is False
    assert "watermark embedded" in entry["outputs"]["2"]["text"][0]
    plain = entry["outputs"]["3"]["images"][0]
    report = verify(comfy.output_dir / plain["subfolder"] / plain["filename"])
    assert not report["watermark"]["found"] and "switched off" in report["record"]["watermark"]["reason"]
    bad = {"1": graph["1"], "2": {**graph["2"], "inputs": {**graph["2"]["inputs"], "filename_prefix": "../../x"}}}
    assert "filename_prefix:" in _error(comfy.run_prompt(bad))


def _dataset_widgets() -> dict:
    return {"subject": "face", "resolution": 64, "face_margin": 0.6, "align_mode": "eyes", "border": "reflect",
            "multiple_faces": "largest", "min_confidence": 0.95, "min_face_px": 64, "min_sharpness": 15.0,
            "max_yaw_deg": 60.0, "white_balance": False, "clahe": False, "contrast": False, "denoise": False,
            "token": "sks", "class_noun": "person", "caption_template": "a photo of {token} {class}",
            "use_existing_captions": True, "auto_caption": "off"}
