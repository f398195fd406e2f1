"""The gated sampler and the enhancement nodes inside the real ComfyUI server."""
from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def server(comfy, sd15_model, astronaut):
    target = comfy.models / "diffusers" / "persona-sd15"
    if not target.exists():
        target.symlink_to(sd15_model, target_is_directory=True)
    Image.fromarray(astronaut).save(comfy.input_dir / "persona_reference.png")
    return comfy


def _saved(comfy, entry, node):
    return [np.asarray(Image.open(comfy.output_dir / i.get("subfolder", "") / i["filename"]))
            for i in entry["outputs"][node]["images"]]


def test_gated_sampler_resamples_with_new_seeds_when_the_threshold_is_not_met(server):
    graph = {
        "1": {"class_type": "DiffusersLoader", "inputs": {"model_path": "persona-sd15"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a photo of sks person"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "blurry"}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "LoadImage", "inputs": {"image": "persona_reference.png"}},
        "6": {"class_type": "PersonaIdentityGatedSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "vae": ["1", 2], "reference": ["5", 0], "seed": 40, "steps": 2, "cfg": 5.0,
            "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0, "embedder": "dlib",
            "threshold": 0.91, "max_attempts": 3, "cfg_schedule": "5, 4", "steps_schedule": "",
            "reference_mode": "mean_reference"}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "gate_best"}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["6", 1], "filename_prefix": "gate_all"}},
    }
    entry = server.run_prompt(graph)
    assert entry["status"]["status_str"] == "success", entry["status"]
    best, attempts = _saved(server, entry, "7"), _saved(server, entry, "8")
    assert len(best) == 1 and best[0].shape == (64, 64, 3)
    assert len(attempts) == 3 and all(a.shape == (64, 64, 3) for a in attempts)
    # a random-weight model draws no face: every attempt fails as faceless, with new seeds
    summary = entry["outputs"]["6"]["text"][0]
    assert summary.startswith("FAILED")
    assert "#1 seed 40" in summary and "#2 seed 41" in summary and "#3 seed 42" in summary


def test_enhancement_nodes_run_in_a_graph(server):
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "persona_reference.png"}},
        "2": {"class_type": "PersonaSharpen", "inputs": {
            "image": ["1", 0], "reference": ["1", 0], "embedder": "dlib", "tolerance": 0.01,
            "whole_image": False, "radius": 1.5, "amount": 0.8, "threshold": 2.0}},
        "3": {"class_type": "PersonaColorMatch", "inputs": {
            "image": ["2", 0], "reference": ["1", 0], "embedder": "dlib", "tolerance": 0.01,
            "whole_image": False, "strength": 1.0, "white_balance": False}},
        "4": {"class_type": "PersonaPhotoFinish", "inputs": {
            "image": ["3", 0], "reference": ["1", 0], "embedder": "dlib", "tolerance": 0.01,
            "whole_image": False, "denoise_strength": 3.0, "grain": 0.01, "grain_size": 1.0, "seed": 0}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "enhanced"}},
    }
    entry = server.run_prompt(graph)
    assert entry["status"]["status_str"] == "success", entry["status"]
    out = _saved(server, entry, "5")[0]
    assert out.shape == (512, 512, 3)
    texts = [entry["outputs"][n]["text"][0] for n in ("2", "3", "4")]
    assert texts[0].startswith("sharpen") and "#0:" in texts[0]
    assert "film_grain" in texts[2]
