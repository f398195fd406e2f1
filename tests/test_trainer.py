"""The headless trainer on a tiny SD1.x-shaped model (random weights) and a real face dataset."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from comfyui_persona.trainers.outputs.export import read_lora_metadata
from comfyui_persona.trainers.loop import Callbacks, train
from comfyui_persona.trainers.config import TrainConfig
from comfyui_persona.trainers.outputs.run_dir import read_log

from trainer_helpers import tiny_config


@pytest.mark.quick
def test_loss_falls_and_only_the_lora_weights_change(tiny_model, face_dataset, tmp_path):
    cfg = tiny_config(tiny_model, face_dataset, tmp_path / "run", steps=100, batch_size=2, rank=8, alpha=8)
    snapshot = {}

    def on_start(info):
        unet = info["denoiser"]
        snapshot["frozen"] = {n: p.detach().clone() for n, p in unet.named_parameters()
                              if not p.requires_grad and "attn1.to_q" in n}
        snapshot["lora"] = {n: p.detach().clone() for n, p in unet.named_parameters() if p.requires_grad}
        snapshot["unet"] = unet

    result = train(cfg, Callbacks(on_start=on_start))
    losses = np.array([r["loss"] for r in result.records])
    assert len(losses) == 100
    assert losses[-20:].mean() < 0.75 * losses[:20].mean(), (losses[:20].mean(), losses[-20:].mean())
    params = dict(snapshot["unet"].named_parameters())
    assert snapshot["frozen"] and all(torch.equal(params[n], v) for n, v in snapshot["frozen"].items())
    changed = [n for n, v in snapshot["lora"].items() if not torch.equal(params[n], v)]
    assert len(changed) == len(snapshot["lora"]) > 0
    # run directory
    run = tmp_path / "run"
    for name in ("config.json", "log.jsonl", "loss.png", "lora.safetensors",
                 "diffusers_lora/pytorch_lora_weights.safetensors"):
        assert (run / name).is_file(), name
    assert json.loads((run / "config.json").read_text())["steps"] == 100
    logged = read_log(run)
    assert [r["step"] for r in logged] == list(range(1, 101))
    for key in ("loss", "lr", "peak_memory_mb", "step_seconds", "samples_per_s"):
        assert key in logged[0], key
    assert logged[0]["peak_memory_mb"] > 0


def test_kohya_export_keys_and_metadata(tiny_model, face_dataset, tmp_path):
    cfg = tiny_config(tiny_model, face_dataset, tmp_path / "run", train_text_encoder=True, token="ohwx")
    result = train(cfg)
    tensors = load_file(str(result.lora_path))
    unet_keys = [k for k in tensors if k.startswith("lora_unet_")]
    te_keys = [k for k in tensors if k.startswith("lora_te_")]
    assert unet_keys and te_keys
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in tensors
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight" in tensors
    for key in tensors:
        assert key.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")), key
    down = tensors["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"]
    assert down.shape[0] == 4 and float(tensors[
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha"]) == 4.0
    meta = read_lora_metadata(result.lora_path)
    assert meta["persona.token"] == "ohwx" and meta["persona.rank"] == "4"
    assert meta["persona.steps"] == "3" and meta["persona.resolution"] == "64"
    assert meta["persona.base_model_hash"] and json.loads(meta["persona.config"])["token"] == "ohwx"
    assert meta["ss_network_dim"] == "4"


def test_prior_preservation_generates_class_images_once(tiny_model, face_dataset, tmp_path):
    common = dict(prior_preservation=True, num_class_images=3, class_images_steps=2,
                  cache_dir=str(tmp_path / "class_cache"), steps=2)
    first = train(tiny_config(tiny_model, face_dataset, tmp_path / "a", **common))
    assert first.class_images_generated == 3
    images = sorted((tmp_path / "class_cache").rglob("*.png"))
    assert len(images) == 3
    mtimes = [p.stat().st_mtime_ns for p in images]
    second = train(tiny_config(tiny_model, face_dataset, tmp_path / "b", **common))
    assert second.class_images_generated == 0
    assert [p.stat().st_mtime_ns for p in images] == mtimes
    for record in read_log(tmp_path / "b"):
        assert record["batch"] == {"instance": 1, "class": 1}
        assert "loss_prior" in record and "loss_instance" in record
        assert record["loss"] == pytest.approx(record["loss_instance"] + record["loss_prior"], abs=1e-5)
    # more class images asked for: only the missing ones are generated
    third = train(tiny_config(tiny_model, face_dataset, tmp_path / "c", **{**common, "num_class_images": 4}))
    assert third.class_images_generated == 1


def test_schedules_and_seeded_reproducibility(tiny_model, face_dataset, tmp_path):
    a = train(tiny_config(tiny_model, face_dataset, tmp_path / "a", steps=6, lr_scheduler="cosine",
                          warmup_steps=2, snr_gamma=5.0, noise_offset=0.05))
    b = train(tiny_config(tiny_model, face_dataset, tmp_path / "b", steps=6, lr_scheduler="cosine",
                          warmup_steps=2, snr_gamma=5.0, noise_offset=0.05))
    assert [r["loss"] for r in a.records] == [r["loss"] for r in b.records]
    lrs = [r["lr"] for r in a.records]
    # linear warm-up over 2 steps to the peak, then a cosine decay toward 0
    assert lrs[:3] == pytest.approx([0.0, 2.5e-3, 5e-3])
    assert lrs[2] > lrs[3] > lrs[4] > lrs[5] > 0
    c = train(tiny_config(tiny_model, face_dataset, tmp_path / "c", steps=6, seed=1))
    assert [r["loss"] for r in c.records] != [r["loss"] for r in a.records]


def test_diffusers_format_lora_loads_in_a_diffusers_pipeline(tiny_model, face_dataset, tmp_path):
    from diffusers import StableDiffusionPipeline

    result = train(tiny_config(tiny_model, face_dataset, tmp_path / "run", steps=3, learning_rate=5e-2))

    def render(with_lora: bool):
        pipe = StableDiffusionPipeline.from_pretrained(str(tiny_model), safety_checker=None,
                                                       requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        if with_lora:
            pipe.load_lora_weights(str(result.diffusers_lora_dir))
        return pipe("a photo of sks person", height=64, width=64, num_inference_steps=2,
                    generator=torch.Generator().manual_seed(0), output_type="np").images[0]

    assert np.abs(render(True) - render(False)).mean() > 1e-4


def test_caption_dropout_and_tag_shuffling_are_seeded_and_keep_the_subject_first(tiny_model):
    from comfyui_persona.trainers.loop.captions import step_caption

    cfg = TrainConfig(base_model=str(tiny_model), dataset="x", caption_dropout=0.3, shuffle_tags=True, token="ohwx")
    caption = "ohwx person, smiling, outdoors, red shirt, close-up"
    seen = []
    for seed in range(200):
        out = step_caption(caption, cfg, torch.Generator().manual_seed(seed))
        assert out == step_caption(caption, cfg, torch.Generator().manual_seed(seed))  # seeded
        seen.append(out)
    dropped = [c for c in seen if c == "a photo of person"]
    assert 0.2 < len(dropped) / len(seen) < 0.4
    kept = [c for c in seen if c not in dropped]
    assert all(c.startswith("ohwx person, ") for c in kept)
    assert all(sorted(c.split(", ")) == sorted(caption.split(", ")) for c in kept)
    assert len(set(kept)) > 10  # the tags really move
    empty = cfg.model_copy(update={"caption_dropout": 1.0, "caption_dropout_to": "empty"})
    assert step_caption(caption, empty, torch.Generator().manual_seed(0)) == ""
    plain = cfg.model_copy(update={"caption_dropout": 0.0, "shuffle_tags": False})
    assert step_caption(caption, plain, torch.Generator().manual_seed(0)) == caption


def test_a_seeded_run_with_caption_dropout_and_shuffled_tags_repeats(tiny_model, face_dataset, tmp_path):
    import shutil

    tagged = tmp_path / "tagged"  # a plain kohya folder: images and comma-separated tag captions
    tagged.mkdir()
    for i, image in enumerate(sorted(face_dataset.glob("*.png"))):
        shutil.copy(image, tagged / f"{i}.png")
        (tagged / f"{i}.txt").write_text("sks person, smiling, astronaut suit, studio light, flag\n")
    fields = dict(steps=4, batch_size=2, caption_dropout=0.5, shuffle_tags=True)
    a = train(tiny_config(tiny_model, tagged, tmp_path / "a", **fields))
    b = train(tiny_config(tiny_model, tagged, tmp_path / "b", **fields))
    plain = train(tiny_config(tiny_model, tagged, tmp_path / "plain", steps=4, batch_size=2))
    losses = lambda r: [x["loss"] for x in r.records]  # noqa: E731
    assert losses(a) == losses(b) and all(np.isfinite(losses(a)))
    assert losses(a) != losses(plain)


def test_shuffled_tags_are_refused_where_captions_are_encoded_once(tiny_model):
    from comfyui_persona.core.config import ConfigError

    with pytest.raises((ConfigError, ValueError), match="shuffle_tags: family 'flux'"):
        TrainConfig(base_model=str(tiny_model), dataset="x", family="flux", shuffle_tags=True)


def test_masked_loss_with_zero_background_leaves_background_gradients_at_zero():
    from comfyui_persona.models.families import Prediction, get_family
    from comfyui_persona.trainers.loop.step import loss_of

    torch.manual_seed(0)
    pred = torch.randn(2, 4, 8, 8, requires_grad=True)
    target = torch.randn(2, 4, 8, 8)
    face = torch.zeros(2, 1, 8, 8)
    face[:, :, 2:6, 3:7] = 1.0
    loss, _ = loss_of(Prediction(pred, target, pred, torch.zeros(2)), 2, 1.0, face)
    loss.backward()
    background = (face == 0).expand_as(pred)
    assert torch.all(pred.grad[background] == 0) and torch.all(pred.grad[~background] != 0)
    # FLUX's packed prediction: the weights are packed like the latents (2x2 patches, per channel)
    flux = get_family("flux")
    packed_pred = torch.zeros(2, 16, 16)  # [B, (8/2)*(8/2) tokens, 4 channels * 4]
    packed = flux.pixel_weight(face, packed_pred)
    assert packed.shape == (2, 16, 16)
    expected = flux.pack(face.expand(-1, 4, -1, -1))
    # token 0 is the top-left 2x2 patch (background); token 6 covers rows 2-3, columns 4-5 (face)
    assert torch.equal(packed, expected) and packed[:, 0].sum() == 0 and packed[:, 6].min() == 1


def test_a_masked_run_trains_on_the_face_masks(tiny_model, face_dataset, tmp_path):
    masked = train(tiny_config(tiny_model, face_dataset, tmp_path / "masked", steps=4, masked_loss=True,
                               background_weight=0.0))
    plain = train(tiny_config(tiny_model, face_dataset, tmp_path / "plain", steps=4))
    losses = lambda r: [x["loss"] for x in r.records]  # noqa: E731
    assert all(np.isfinite(losses(masked))) and losses(masked) != losses(plain)


def test_image_weights_scale_each_images_loss(tiny_model, face_dataset, tmp_path):
    """Weight 1 everywhere is the plain run, bit for bit; weight 0 everywhere teaches nothing
    (the up matrices start at zero and stay there); an unknown stem is named."""
    from safetensors.torch import load_file

    from comfyui_persona.core.config import ConfigError
    from comfyui_persona.faces.dataset import read_dataset

    stems = [it.image.stem for it in read_dataset(face_dataset)]
    plain = train(tiny_config(tiny_model, face_dataset, tmp_path / "plain", steps=2))
    ones = train(tiny_config(tiny_model, face_dataset, tmp_path / "ones", steps=2,
                             image_weights={s: 1.0 for s in stems}))
    a, b = load_file(str(plain.lora_path)), load_file(str(ones.lora_path))
    assert all(torch.equal(a[k], b[k]) for k in a)
    zero = train(tiny_config(tiny_model, face_dataset, tmp_path / "zero", steps=2,
                             image_weights={s: 0.0 for s in stems}))
    ups = [v for k, v in load_file(str(zero.lora_path)).items() if k.endswith("lora_up.weight")]
    assert ups and all(torch.count_nonzero(v) == 0 for v in ups)
    assert zero.final_loss == 0.0
    half = train(tiny_config(tiny_model, face_dataset, tmp_path / "half", steps=1,
                             image_weights={s: 0.5 for s in stems}))
    assert half.first_loss == pytest.approx(plain.first_loss * 0.5, rel=1e-4)
    with pytest.raises(ConfigError, match="image_weights.*'nobody'"):
        train(tiny_config(tiny_model, face_dataset, tmp_path / "bad", image_weights={"nobody": 2.0}))
