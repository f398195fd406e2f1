"""Full DreamBooth fine-tuning, and single-file checkpoints in both directions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from comfyui_persona.trainers.loop import Callbacks, train
from comfyui_persona.models.loading import load_components, load_single_file
from comfyui_persona.models.single_file import save_single_file

from trainer_helpers import tiny_config


def test_dreambooth_trains_the_whole_unet_and_exports_both_formats(tiny_model, face_dataset, tmp_path):
    cfg = tiny_config(tiny_model, face_dataset, tmp_path / "run", method="dreambooth", steps=60,
                      learning_rate=1e-3, batch_size=2, train_text_encoder=True, text_encoder_lr=1e-4)
    counts = {}
    result = train(cfg, Callbacks(on_start=lambda info: counts.update(
        trainable=info["trainable_parameters"],
        unet=sum(p.numel() for p in info["denoiser"].parameters()))))
    assert counts["trainable"] > counts["unet"]  # the whole UNet, and the text encoder
    losses = np.array([r["loss"] for r in result.records])
    assert losses[-10:].mean() < 0.5 * losses[:10].mean()
    base = load_components("sd15", tiny_model)
    folder = load_components("sd15", result.model_dir)
    changed = [k for k, v in folder.denoiser.state_dict().items()
               if not torch.equal(v, base.denoiser.state_dict()[k])]
    assert len(changed) == len(base.denoiser.state_dict())
    te_changed = [k for k, v in folder.text_encoder.state_dict().items()
                  if not torch.equal(v, base.text_encoder.state_dict()[k])]
    assert te_changed
    single = load_single_file(result.checkpoint_path, config_dir=tiny_model)
    for key, value in folder.denoiser.state_dict().items():
        assert torch.allclose(single.denoiser.state_dict()[key].float(), value, atol=2e-3), key


def test_single_file_round_trip_with_the_shipped_configs(sd15_model, tmp_path):
    """diffusers -> original layout (ours) -> diffusers (diffusers' own converter, reading
    only the config JSONs shipped in this repository): every tensor comes back."""
    from built import large_memory

    with large_memory():  # the published-size model twice in this process
        original = load_components("sd15", sd15_model)
        path = save_single_file(tmp_path / "sd15.safetensors", original.denoiser, original.vae,
                                original.text_encoder, {"persona.random_weights": "true"})
        loaded = load_single_file(path)  # family sd15: configs/sd15 + the offline tokenizer
        assert loaded.random_weights
        for name in ("denoiser", "vae", "text_encoder"):
            a, b = getattr(original, name).state_dict(), getattr(loaded, name).state_dict()
            assert a.keys() == b.keys(), name
            for key in a:
                assert torch.allclose(a[key].half().float(), b[key].float(), atol=1e-3), (name, key)


def test_pickled_checkpoints_are_refused(tmp_path):
    bad = tmp_path / "model.ckpt"
    bad.write_bytes(b"not really")
    with pytest.raises(ValueError, match="safetensors"):
        load_single_file(bad)
