"""DINO subject fidelity (the architecture against transformers' own ViT on the same random
weights) and the DreamBench protocol: its prompt set and its report."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from comfyui_persona.metrics.dino import build, features, load_original


def _to_transformers(state: dict, layers: int) -> dict:
    """An original DINO ViT checkpoint in transformers' ViTModel names (transformers 5)."""
    out = {"embeddings.cls_token": state["cls_token"], "embeddings.position_embeddings": state["pos_embed"],
           "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
           "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
           "layernorm.weight": state["norm.weight"], "layernorm.bias": state["norm.bias"]}
    for i in range(layers):
        b, h = f"blocks.{i}.", f"layers.{i}."
        for kind in ("weight", "bias"):
            q, k, v = state[b + f"attn.qkv.{kind}"].chunk(3)
            out.update({h + f"attention.q_proj.{kind}": q, h + f"attention.k_proj.{kind}": k,
                        h + f"attention.v_proj.{kind}": v,
                        h + f"attention.o_proj.{kind}": state[b + f"attn.proj.{kind}"],
                        h + f"layernorm_before.{kind}": state[b + f"norm1.{kind}"],
                        h + f"layernorm_after.{kind}": state[b + f"norm2.{kind}"],
                        h + f"mlp.fc1.{kind}": state[b + f"mlp.fc1.{kind}"],
                        h + f"mlp.fc2.{kind}": state[b + f"mlp.fc2.{kind}"]})
    return out


def test_dino_features_match_transformers_vit_on_the_same_random_weights(astronaut, grace_hopper):
    import transformers

    torch.manual_seed(0)
    original = {k: torch.randn_like(v) * 0.02 if k.endswith("weight") and v.ndim > 1 else v + 0.01 * torch.randn_like(v)
                for k, v in build("dino_vits16").state_dict().items()}
    ours = load_original(build("dino_vits16"), original)
    config = transformers.ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                    intermediate_size=1536, image_size=224, patch_size=16, layer_norm_eps=1e-6,
                                    qkv_bias=True)
    reference = transformers.ViTModel(config, add_pooling_layer=False).eval()
    reference.load_state_dict(_to_transformers(original, 12))
    images = [astronaut, grace_hopper]
    from comfyui_persona.metrics.dino import preprocess

    with torch.no_grad():
        expected = reference(pixel_values=preprocess(images)).last_hidden_state[:, 0]
    got = features(ours, images)
    assert torch.allclose(got, torch.nn.functional.normalize(expected, dim=1), atol=1e-4)
    with pytest.raises(ValueError, match="do not fit"):
        load_original(build("dino_vits16"), {"cls_token": original["cls_token"]})


def test_dinov2_reads_its_original_keys_and_embeds_any_photo_at_224():
    model = build("dinov2_vits14")
    state = dict(model.state_dict())
    state["mask_token"] = torch.zeros(1, 384)  # in the original checkpoint, not in the feature extractor
    load_original(model, state)
    out = features(model, [np.zeros((300, 200, 3), np.uint8), np.full((64, 64, 3), 200, np.uint8)])
    assert out.shape == (2, 384) and torch.allclose(out.norm(dim=1), torch.ones(2))


def test_dreambench_prompts_are_the_benchmarks_25_for_live_subjects_and_objects():
    from comfyui_persona.metrics import dreambench

    live = dreambench.prompts("sks", "person")
    assert len(live) == 25 and len(set(live)) == 25
    assert live[0] == ("a sks person in the jungle", "a person in the jungle")
    assert ("a sks person wearing a black top hat and a monocle", "a person wearing a black top hat and a monocle") in live
    assert live[-1] == ("a cube shaped sks person", "a cube shaped person")
    objects = dreambench.prompts("sks", "teapot")
    assert len(objects) == 25 and ("a sks teapot floating in an ocean of milk",
                                   "a teapot floating in an ocean of milk") in objects
    assert dreambench.prompts("sks", "dog") == dreambench.prompts("sks", "dog", "live")
    assert dreambench.prompts("sks", "dog", "object")[10][0] == "a sks dog with a wheat field in the background"
    table = dreambench.Scores(0.5, None, 0.25, 4, []).table()
    assert "DINO" in table and "CLIP-I" in table and "CLIP-T" in table and "0.668" in table
    assert "this subject (4 images)" in table and "skipped" in table


def test_the_dreambench_protocol_generates_its_prompts_and_reports_the_three_numbers(
        tiny_model, face_dataset, tmp_path, monkeypatch, capsys):
    """With DINO weights present (here random ones in the original checkpoint format, which
    make the number meaningless but real) and CLIP absent (a note names its file)."""
    from comfyui_persona.app.cli import main
    from comfyui_persona.trainers.loop import train

    from trainer_helpers import tiny_config

    weights = tmp_path / "weights"
    monkeypatch.setenv("PERSONA_WEIGHTS", str(weights))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-torch-cache"))
    (weights / "dino").mkdir(parents=True)
    torch.save(build("dino_vits16").state_dict(), weights / "dino" / "dino_deitsmall16_pretrain.pth")
    from comfyui_persona.metrics.dino import dino_model

    dino_model.cache_clear()
    lora = train(tiny_config(tiny_model, face_dataset, tmp_path / "run", steps=1)).lora_path
    code = main(["eval", "--protocol", "dreambench", "--base-model", str(tiny_model), "--lora", str(lora),
                 "--reference", str(face_dataset), "--limit", "2", "--seeds", "2", "--steps", "1", "--size", "64",
                 "--out", str(tmp_path / "bench")])
    dino_model.cache_clear()
    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "bench" / "dreambench.json").read_text())
    assert report["prompts"] == ["a sks person in the jungle", "a sks person in the snow"]
    assert report["images"] == 4 and len(list((tmp_path / "bench" / "images").glob("*.png"))) == 4
    assert -1.0 <= report["DINO"] <= 1.0 and report["CLIP-I"] is None and report["CLIP-T"] is None
    assert any("open_clip_ViT-B-32_laion2b_s34b_b79k.bin" in n for n in report["notes"])
    assert report["base_model_random_weights"] is True
    assert "DreamBooth (Stable Diffusion)" in out and "this subject (4 images)" in out
