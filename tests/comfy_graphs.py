"""API-format graphs the server tests queue in a real ComfyUI."""
from __future__ import annotations


def lora_graph(model_dir: str, lora: str, strength: float, prefix: str) -> dict:
    """SD1.5 from models/diffusers/``model_dir`` with ``lora`` at ``strength`` (model and text
    encoder), a 64 px image sampled in 2 steps and saved under ``prefix`` (node "8"); replace
    node "1" to load the model another way."""
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
