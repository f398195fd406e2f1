"""SDXL and FLUX LoRA training on tiny models of their shape, and the exported files read by
independent consumers: diffusers' own kohya converters, and ComfyUI's LoRA key mapping."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfy_lora_checks import COMFY_FLUX_CHECK, COMFY_SDXL_CHECK, assert_every_key_maps
from trainer_helpers import tiny_config
from comfyui_persona.trainers.outputs.export import read_lora_metadata
from comfyui_persona.trainers.loop import train


def _read_log(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def sdxl_run(tiny_sdxl, face_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("sdxl") / "run"
    cfg = tiny_config(tiny_sdxl, face_dataset, out, family="sdxl", train_text_encoder=True, steps=4,
                      prior_preservation=True, num_class_images=2, class_images_steps=2,
                      cache_dir=str(out.parent / "class_cache"))
    return cfg, train(cfg)


@pytest.mark.quick
def test_sdxl_dreambooth_lora_trains_with_two_text_encoders(sdxl_run):
    cfg, result = sdxl_run
    assert result.steps_done == 4 and result.class_images_generated == 2
    records = [r for r in _read_log(result.run_dir) if "loss" in r]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    assert all("loss_prior" in r for r in records)  # DreamBooth-LoRA: prior preservation on
    tensors = load_file(str(result.lora_path))
    prefixes = {k.split("_")[0] + "_" + k.split("_")[1] for k in tensors}
    assert prefixes == {"lora_unet", "lora_te1", "lora_te2"}
    # kohya's SDXL layout: original (LDM) block names
    unet_keys = [k for k in tensors if k.startswith("lora_unet_")]
    assert unet_keys and all(k.startswith(("lora_unet_input_blocks_", "lora_unet_middle_block_",
                                           "lora_unet_output_blocks_")) for k in unet_keys)
    meta = read_lora_metadata(result.lora_path)
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"


def test_sdxl_kohya_lora_equals_the_trained_adapters_in_diffusers(sdxl_run, tiny_sdxl):
    """diffusers' own kohya (SGM-name) converter reads the file; the UNet it builds gives the
    same output as the diffusers-format export of the same run."""
    from diffusers import StableDiffusionXLPipeline

    cfg, result = sdxl_run
    outs = []
    for source in (result.lora_path, result.diffusers_lora_dir / "pytorch_lora_weights.safetensors"):
        pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_sdxl))
        pipe.load_lora_weights(str(source))
        torch.manual_seed(0)
        x = torch.randn(1, 4, 16, 16)
        enc = torch.randn(1, 77, 64)
        added = {"text_embeds": torch.randn(1, 32), "time_ids": torch.tensor([[64., 64, 0, 0, 64, 64]])}
        with torch.no_grad():
            outs.append(pipe.unet(x, torch.tensor([500]), enc, added_cond_kwargs=added).sample)
    base = StableDiffusionXLPipeline.from_pretrained(str(tiny_sdxl)).unet
    with torch.no_grad():
        plain = base(x, torch.tensor([500]), enc, added_cond_kwargs=added).sample
    assert (outs[1] - plain).abs().max() > 1e-4  # the LoRA does something
    assert torch.allclose(outs[0], outs[1], atol=2e-3, rtol=1e-2)


def test_sdxl_lora_applies_fully_in_comfyui(sdxl_run, tiny_sdxl, comfy, tmp_path):
    """ComfyUI's own detection builds its SDXL UNet from our LDM weights, and its LoRA loader
    maps every key of the file (none reported 'lora key not loaded')."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from comfyui_persona.models.keys.ldm import unet_to_ldm

    cfg, result = sdxl_run
    unet = UNet2DConditionModel.from_pretrained(tiny_sdxl / "unet")
    save_file({k: v.contiguous() for k, v in unet_to_ldm(unet.state_dict(), unet.config).items()},
              str(tmp_path / "unet_ldm.safetensors"))
    te_keys = []
    for tag, cls, sub in (("te1", CLIPTextModel, "text_encoder"), ("te2", CLIPTextModelWithProjection, "text_encoder_2")):
        te = cls.from_pretrained(tiny_sdxl / sub)
        te_keys += [f"{tag}:" + (k if k.startswith("text_model.") or k.startswith("text_projection")
                                 else f"text_model.{k}") for k in te.state_dict()]
    assert_every_key_maps(comfy, COMFY_SDXL_CHECK, tmp_path / "unet_ldm.safetensors", result.lora_path, te_keys)


@pytest.fixture(scope="module")
def flux_run(tiny_flux, face_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("flux") / "run"
    cfg = tiny_config(tiny_flux, face_dataset, out, family="flux", quantize_base="fp8", mixed_precision="bf16",
                      steps=4, validate_every=4, validation_steps=2, validation_identity="off",
                      target_modules=["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj",
                                      "add_v_proj", "to_add_out", "proj_mlp"])
    events = {}
    result = train(cfg, __import__("comfyui_persona.trainers.loop", fromlist=["Callbacks"]).Callbacks(
        on_start=lambda info: events.update(info)))
    return cfg, result, events


@pytest.mark.quick
def test_flux_lora_trains_on_an_fp8_base_without_text_encoders(flux_run):
    from comfyui_persona.trainers.memory.quantize import Fp8Linear

    cfg, result, events = flux_run
    assert result.steps_done == 4 and result.final_loss is not None
    unet = events["denoiser"]
    assert events["text_encoder"] is None and events["text_encoder_2"] is None  # cached, then dropped
    bases = [m.base_layer for m in unet.modules() if hasattr(m, "base_layer")]
    assert bases and all(isinstance(b, Fp8Linear) for b in bases)
    assert all(b.weight.dtype == torch.float8_e4m3fn for b in bases)
    trainable = [p for p in unet.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert (result.run_dir / "samples" / "step-000004.png").is_file()  # sampled from cached embeddings
    meta = read_lora_metadata(result.lora_path)
    assert meta["ss_base_model_version"] == "flux1"


def test_flux_kohya_lora_fuses_qkv_and_equals_the_trained_adapters(flux_run, tiny_flux, tmp_path):
    """The kohya file holds BFL names (fused qkv / linear1); diffusers' kohya-FLUX converter
    splits them back, and the transformer it builds matches the diffusers-format export."""
    from diffusers import FluxPipeline

    cfg, result, _ = flux_run
    tensors = load_file(str(result.lora_path))
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in tensors
    assert tensors["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"].shape[0] == 3 * cfg.rank
    assert float(tensors["lora_unet_double_blocks_0_img_attn_qkv.alpha"]) == 3 * cfg.alpha
    assert tensors["lora_unet_single_blocks_0_linear1.lora_down.weight"].shape[0] == 4 * cfg.rank
    # every fused layer's delta is the row-stack of its parts' deltas (alpha / rank kept)
    peft = load_file(str(result.diffusers_lora_dir / "pytorch_lora_weights.safetensors"))
    scale = cfg.alpha / cfg.rank

    def delta(name, kohya_rank):
        up = tensors[f"lora_unet_{name}.lora_up.weight"].float()
        down = tensors[f"lora_unet_{name}.lora_down.weight"].float()
        return up @ down * float(tensors[f"lora_unet_{name}.alpha"]) / kohya_rank

    parts = [peft[f"transformer.single_transformer_blocks.0.{m}.lora_B.weight"]
             @ peft[f"transformer.single_transformer_blocks.0.{m}.lora_A.weight"] * scale
             for m in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")]
    assert torch.allclose(delta("single_blocks_0_linear1", 4 * cfg.rank), torch.cat(parts), atol=1e-3)
    # diffusers' kohya-FLUX converter (its single-block split assumes FLUX's real width, so the
    # double blocks are compared) rebuilds the same transformer as the diffusers-format export
    double_only = tmp_path / "kohya_double.safetensors"
    save_file({k: v for k, v in tensors.items() if "single_blocks" not in k}, str(double_only),
              metadata=read_lora_metadata(result.lora_path))
    peft_double = tmp_path / "peft_double.safetensors"
    save_file({k: v for k, v in peft.items() if "single_transformer_blocks" not in k}, str(peft_double))
    outs = []
    for source in (double_only, peft_double):
        pipe = FluxPipeline.from_pretrained(str(tiny_flux))
        pipe.load_lora_weights(str(source))
        torch.manual_seed(0)
        hidden = torch.randn(1, 256, 64)
        kwargs = dict(encoder_hidden_states=torch.randn(1, 8, 32), pooled_projections=torch.randn(1, 32),
                      timestep=torch.tensor([0.5]), guidance=torch.tensor([1.0]), txt_ids=torch.zeros(8, 3),
                      img_ids=torch.zeros(256, 3), return_dict=False)
        with torch.no_grad():
            outs.append(pipe.transformer(hidden, **kwargs)[0])
    assert torch.allclose(outs[0], outs[1], atol=2e-3, rtol=1e-2)


def test_flux_loads_from_separate_single_files(tiny_flux, tmp_path, monkeypatch):
    """The files ComfyUI users keep: a BFL-layout transformer, CLIP-L and T5 text encoder files
    and the VAE, read with the configs shipped in configs/flux."""
    from diffusers import FluxTransformer2DModel

    from comfy_files import use_tiny_flux_configs, write_flux_files
    from comfyui_persona.models.loading import load_components

    ref = FluxTransformer2DModel.from_pretrained(tiny_flux / "transformer")
    files = write_flux_files(tiny_flux, tmp_path)
    for name, stored in (("clip_l", "text_encoder/model.safetensors"), ("vae", "vae/diffusion_pytorch_model.safetensors")):
        assert load_file(str(files[name])).keys() == load_file(str(tiny_flux / stored)).keys()
    monkeypatch.setenv("PERSONA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PERSONA_T5_TOKENIZER", str(tiny_flux / "tokenizer_2"))
    use_tiny_flux_configs(tiny_flux, tmp_path / "cache")
    comps = load_components("flux", files["base_model"], clip_l=files["clip_l"], t5=files["t5"], vae=files["vae"])
    assert comps.denoiser.config.num_single_layers == ref.config.num_single_layers
    own = comps.denoiser.state_dict()
    assert all(torch.equal(own[k], v) for k, v in ref.state_dict().items())
    assert comps.text_encoder_2 is not None and comps.tokenizer_2 is not None
    ids = comps.tokenizer_2(["a photo"], return_tensors="pt").input_ids
    assert comps.text_encoder_2(ids)[0].shape[-1] == 32


def test_flux_single_file_needs_its_text_encoders(tiny_flux, face_dataset, tmp_path):
    from comfyui_persona.core.config import ConfigError

    f = tmp_path / "flux.safetensors"
    save_file({"x": torch.zeros(1)}, str(f))
    cfg = tiny_config(f, face_dataset, tmp_path / "run", family="flux")
    with pytest.raises(ConfigError, match="clip_l, t5 and vae"):
        cfg.check_paths()


@pytest.mark.quick
def test_family_capabilities_are_checked_before_any_model_loads(tiny_flux, face_dataset, tmp_path):
    from comfyui_persona.core.config import ConfigError

    for fields, message in ((dict(method="dreambooth"), "method"),
                            (dict(train_text_encoder=True), "train_text_encoder"),
                            (dict(resolution=72), "multiple of 16")):
        with pytest.raises((ConfigError, ValueError), match=message):
            tiny_config(tiny_flux, face_dataset, tmp_path / "run", family="flux", **fields)


def test_flux_lora_applies_fully_in_comfyui(flux_run, tiny_flux, comfy, tmp_path):
    """ComfyUI's own FLUX model, built from our BFL-layout transformer file, and its LoRA
    loader map every key of the exported file (none reported 'lora key not loaded')."""
    if not (comfy.root / "comfy" / "ldm" / "flux").is_dir():
        pytest.skip(f"{comfy.host}: this ComfyUI predates FLUX")
    from diffusers import FluxTransformer2DModel

    from comfyui_persona.models.families.flux.keys import diffusers_to_bfl

    _cfg, result, _events = flux_run
    ref = FluxTransformer2DModel.from_pretrained(tiny_flux / "transformer")
    save_file({f"model.diffusion_model.{k}": v.contiguous() for k, v in
               diffusers_to_bfl(ref.state_dict(), dict(ref.config)).items()}, str(tmp_path / "flux_bfl.safetensors"))
    shape = {"num_heads": ref.config.num_attention_heads, "axes_dim": list(ref.config.axes_dims_rope)}
    assert_every_key_maps(comfy, COMFY_FLUX_CHECK, tmp_path / "flux_bfl.safetensors", result.lora_path, shape)


def test_flux_trains_with_the_face_weighted_loss(tiny_flux, face_dataset, tmp_path):
    """The weights are packed like FLUX's latents: a masked run trains (shapes meet)."""
    result = train(tiny_config(tiny_flux, face_dataset, tmp_path / "run", family="flux", steps=2,
                               masked_loss=True, background_weight=0.1, validation_identity="off"))
    assert result.steps_done == 2 and all(math.isfinite(r["loss"]) for r in result.records)


def test_flux_x0_from_the_velocity_inverts_the_noising():
    """The identity loss decodes x0 = x_t - sigma * v: exact for FLUX's flow-matching noising."""
    from comfyui_persona.models.families import Prediction, get_family

    flux = get_family("flux")
    latents, noise = torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 8)
    assert torch.equal(flux.unpack(flux.pack(latents), 6, 8), latents)
    sigma = torch.tensor([0.2, 0.9])
    noisy = (1 - sigma.view(-1, 1, 1, 1)) * latents + sigma.view(-1, 1, 1, 1) * noise
    p = Prediction(flux.pack(noise - latents), flux.pack(noise - latents), noisy, sigma * 1000)
    assert torch.allclose(flux.predicted_x0(None, p), latents, atol=1e-5)


def test_flux_trains_with_prior_preservation_and_the_identity_loss(tiny_flux, face_dataset, tmp_path):
    """Class images sampled by the FLUX pipeline before its text encoders leave; the identity
    term decodes FLUX's x0 through its shifted VAE."""
    cfg = tiny_config(tiny_flux, face_dataset, tmp_path / "run", family="flux", steps=3, prior_preservation=True,
                      num_class_images=2, class_images_steps=2, identity_loss_weight=0.5, identity_weights="random",
                      identity_max_timestep=1000, validation_identity="off", t5_max_length=16)
    result = train(cfg)
    assert result.class_images_generated == 2
    class_dir = next(cfg.class_cache_dir().iterdir())
    assert len(list(class_dir.glob("*.png"))) == 2
    assert all("loss_prior" in r and "loss_identity" in r for r in result.records)
    assert all(math.isfinite(r["loss_identity"]) and 0 <= r["loss_identity"] <= 2 for r in result.records)
    assert result.lora_path.is_file()


@pytest.mark.parametrize("field", ["base_model", "t5"])
def test_a_gguf_file_is_refused_with_what_to_use_instead(face_dataset, tmp_path, field):
    """ComfyUI-GGUF's block-quantized files (models/unet, models/diffusion_models, T5 in
    models/text_encoders) cannot be trained through: refused before anything loads, naming the
    file and the .safetensors to use."""
    from comfyui_persona.core.config import ConfigError

    gguf = tmp_path / "flux1-dev-Q4_K_S.gguf"
    gguf.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + bytes(64))  # a GGUF header's start
    files = {n: tmp_path / f"{n}.safetensors" for n in ("clip_l", "t5", "vae")}
    for f in files.values():
        save_file({"x": torch.zeros(1)}, str(f))
    base = tmp_path / "flux.safetensors"
    save_file({"x": torch.zeros(1)}, str(base))
    fields = {**{k: str(v) for k, v in files.items()}, field: str(gguf)}
    cfg = tiny_config(fields.pop("base_model", base), face_dataset, tmp_path / "run", family="flux", **fields)
    with pytest.raises(ConfigError, match=rf"{field}: 'flux1-dev-Q4_K_S.gguf' is a GGUF file .* Use the same "
                                          r"model's .safetensors in bf16, fp16 or fp8"):
        cfg.check_paths()
