"""The exported LoRA in ComfyUI's own LoraLoader: every key applied, and it changes the image."""
from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

pytestmark = pytest.mark.server


def _graph(model_dir: str, lora: str, strength: float, prefix: str) -> dict:
    return {
        "1": {"class_type": "DiffusersLoader", "inputs": {"model_path": model_dir}},
        "2": {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": lora,
                                                     "strength_model": strength, "strength_clip": strength}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 1], "text": "a photo of sks person"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 1], "text": ""}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {"model": ["2", 0], "positive": ["3", 0], "negative": ["4", 0],
                                                   "latent_image": ["5", 0], "seed": 7, "steps": 2, "cfg": 5.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": prefix}},
    }


def _image(comfy, entry) -> np.ndarray:
    info = entry["outputs"]["8"]["images"][0]
    return np.asarray(Image.open(comfy.output_dir / info.get("subfolder", "") / info["filename"]), np.float64)


def test_kohya_lora_loads_fully_in_comfyui_and_changes_the_output(comfy, sd15_model, sd15_lora):
    target = comfy.models / "diffusers" / "persona-sd15"
    if not target.exists():
        target.symlink_to(sd15_model, target_is_directory=True)
    shutil.copy(sd15_lora, comfy.models / "loras" / "persona_sd15_test.safetensors")
    with safe_open(str(sd15_lora), "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("lora_te_") for k in keys) and any(k.startswith("lora_unet_") for k in keys)

    log_before = len(comfy.log())
    with_lora = comfy.run_prompt(_graph("persona-sd15", "persona_sd15_test.safetensors", 1.0, "lora_on"))
    assert with_lora["status"]["status_str"] == "success", with_lora["status"]
    new_log = comfy.log()[log_before:]
    assert "lora key not loaded" not in new_log, re.findall(r"lora key not loaded.*", new_log)[:5]
    without = comfy.run_prompt(_graph("persona-sd15", "persona_sd15_test.safetensors", 0.0, "lora_off"))
    assert without["status"]["status_str"] == "success", without["status"]
    difference = np.abs(_image(comfy, with_lora) - _image(comfy, without)).mean()
    assert difference > 0.5, difference
