"""Qwen-Image LoRA training on a tiny model of its shape (double-stream blocks with 3-axis
rotary positions, a Qwen2.5-VL text encoder read after Qwen-Image's chat template, the causal
video VAE with per-channel latent statistics), every training feature the family offers, and
the exported files read by independent consumers: diffusers' Qwen-Image LoRA loader, and
ComfyUI's own QwenImage model and LoRA key map."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfy_lora_checks import COMFY_QWEN_IMAGE_CHECK, assert_every_key_maps
from trainer_helpers import assert_both_lora_files_apply_alike, assert_generates_behind_the_gate, \
    assert_trained_with_every_feature, tiny_config, train_every_feature
from comfyui_persona.trainers.loop import Callbacks, train


@pytest.fixture(scope="module")
def qwen_image_run(tiny_qwen_image, face_dataset, tmp_path_factory):
    """Every feature at once (trainer_helpers.EVERY_FEATURE), the identity loss through
    Qwen-Image's x0."""
    out = tmp_path_factory.mktemp("qwen_image") / "run"
    return train_every_feature(tiny_qwen_image, face_dataset, out, "qwen_image", llm_max_length=48)


@pytest.mark.quick
def test_qwen_image_lora_trains_with_every_feature(qwen_image_run):
    assert_trained_with_every_feature(qwen_image_run, "qwen_image", "qwen-image")


def _transformer_out(transformer, seed=0):
    torch.manual_seed(seed)
    x, text = torch.randn(1, 16, 64), torch.randn(1, 7, transformer.config.joint_attention_dim)
    with torch.no_grad():
        return transformer(hidden_states=x, encoder_hidden_states=text, encoder_hidden_states_mask=torch.ones(1, 7),
                           timestep=torch.tensor([0.4]), img_shapes=[[(1, 4, 4)]], return_dict=False)[0]


def test_qwen_image_lora_files_apply_the_trained_adapters_in_diffusers(qwen_image_run, tiny_qwen_image):
    """The ComfyUI file (``diffusion_model.<module>``, lora_down/lora_up/alpha) and the
    diffusers-format file, each loaded by diffusers' Qwen-Image LoRA loader into a fresh
    pipeline, give the same transformer, and it differs from the base."""
    from diffusers import QwenImagePipeline

    _cfg, result, _ = qwen_image_run
    tensors = load_file(str(result.lora_path))
    assert tensors and all(k.startswith("diffusion_model.") for k in tensors)
    assert {"diffusion_model.transformer_blocks.0.attn.to_q.lora_down.weight",
            "diffusion_model.transformer_blocks.1.attn.to_add_out.lora_up.weight",
            "diffusion_model.transformer_blocks.1.attn.add_k_proj.alpha"} <= tensors.keys()
    assert_both_lora_files_apply_alike(QwenImagePipeline, tiny_qwen_image, result, _transformer_out)


def comfyui_shape(config) -> dict:
    """What ComfyUI's QwenImage model takes at Qwen-Image's published size, at the test size."""
    return {"attention_head_dim": config.attention_head_dim, "num_attention_heads": config.num_attention_heads,
            "joint_attention_dim": config.joint_attention_dim, "axes_dims_rope": list(config.axes_dims_rope),
            "out_channels": config.out_channels}


@pytest.fixture(scope="module")
def qwen_image_dora(tiny_qwen_image, face_dataset, tmp_path_factory):
    cfg = tiny_config(tiny_qwen_image, face_dataset, tmp_path_factory.mktemp("qwen_dora") / "run",
                      family="qwen_image", steps=2, use_dora=True, learning_rate=5e-2, llm_max_length=48)
    return train(cfg)


def test_qwen_image_lora_and_dora_apply_fully_in_comfyui(qwen_image_run, qwen_image_dora, tiny_qwen_image, comfy,
                                                         tmp_path):
    """ComfyUI's own QwenImage model takes diffusers' transformer weights key for key (strict),
    and its LoRA loader maps every key of the exported LoRA file and of a DoRA file (its
    ``dora_scale`` per module; none 'not loaded')."""
    if not (comfy.root / "comfy" / "ldm" / "qwen_image").is_dir():
        pytest.skip(f"{comfy.host}: this ComfyUI predates Qwen-Image")
    from diffusers import QwenImageTransformer2DModel

    ref = QwenImageTransformer2DModel.from_pretrained(tiny_qwen_image / "transformer")
    path = tmp_path / "qwen_image.safetensors"
    save_file({f"model.diffusion_model.{k}": v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    dora = load_file(str(qwen_image_dora.lora_path))
    scales = [k for k in dora if k.endswith(".dora_scale")]
    assert scales and len(scales) == len([k for k in dora if k.endswith(".lora_up.weight")])
    for lora in (qwen_image_run[1].lora_path, qwen_image_dora.lora_path):
        assert_every_key_maps(comfy, COMFY_QWEN_IMAGE_CHECK, path, lora, comfyui_shape(ref.config))


def test_qwen_image_single_file_needs_its_text_encoder_and_vae(face_dataset, tmp_path):
    from comfyui_persona.core.config import ConfigError

    f = tmp_path / "qwen_image.safetensors"
    save_file({"x": torch.zeros(1)}, str(f))
    with pytest.raises(ConfigError, match=r"set llm \(qwen_2.5_vl_7b.safetensors\) and vae"):
        tiny_config(f, face_dataset, tmp_path / "run", family="qwen_image").check_paths()


@pytest.mark.quick
def test_qwen_image_latents_round_trip_and_x0_inverts_the_noising():
    """The VAE's latents in the transformer's space (normalised per channel by the VAE's
    latents_mean/std, then diffusers' 2x2 packing) and back; the identity loss decodes
    x0 = x_t - sigma * v in the VAE's space."""
    from diffusers import QwenImagePipeline

    from comfyui_persona.models.families import Prediction, get_family

    fam = get_family("qwen_image")
    gen = torch.Generator().manual_seed(0)
    mean, std = torch.randn(16, generator=gen).tolist(), (torch.rand(16, generator=gen) + 0.5).tolist()
    comps = SimpleNamespace(vae=SimpleNamespace(config=SimpleNamespace(latents_mean=mean, latents_std=std)))
    latents, noise = torch.randn(2, 16, 6, 8), torch.randn(2, 12, 64)
    tokens = fam.to_model(comps, latents)
    normalised = (latents - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    assert torch.allclose(tokens, QwenImagePipeline._pack_latents(normalised, 2, 16, 6, 8), atol=1e-5)
    assert torch.allclose(fam.from_model(comps, tokens, 6, 8), latents, atol=1e-5)
    sigma = torch.tensor([0.2, 0.9])
    noisy = (1 - sigma.view(-1, 1, 1)) * tokens + sigma.view(-1, 1, 1) * noise
    p = Prediction(noise - tokens, noise - tokens, fam.from_model(comps, noisy, 6, 8), sigma * 1000)
    assert torch.allclose(fam.predicted_x0(comps, p), latents, atol=1e-4)


@pytest.mark.quick
def test_qwen_image_noise_levels_follow_the_pipelines_resolution_shift():
    """Without ``timestep_shift`` the logit-normal draws are shifted by ``exp(mu)``, ``mu``
    linear in the image's tokens between Qwen-Image's published scheduler settings (0.5 at 256
    tokens, 0.9 at 8192: 2.0x at 1024 px), which the family's own scheduler carries for its
    pipeline; ``timestep_shift`` replaces it."""
    from comfyui_persona.models.families import get_family
    from comfyui_persona.models.families.qwen_image import dynamic_mu

    fam = get_family("qwen_image")
    assert dynamic_mu(256) == pytest.approx(0.5) and dynamic_mu(8192) == pytest.approx(0.9)
    assert dynamic_mu(4096) == pytest.approx(0.5 + 0.4 * (4096 - 256) / (8192 - 256))
    assert math.exp(dynamic_mu(4096)) == pytest.approx(2.0, abs=0.01)  # 1024 px: 64x64 tokens
    config = fam.new_scheduler().config
    assert (config.base_image_seq_len, config.max_image_seq_len, config.base_shift, config.max_shift,
            config.shift_terminal, config.time_shift_type, config.use_dynamic_shifting) == \
        (256, 8192, 0.5, 0.9, 0.02, "exponential", True)
    u = torch.sigmoid(torch.randn(4, generator=torch.Generator().manual_seed(3)))
    factor = math.exp(dynamic_mu(4096))
    drawn = fam.sigmas(4, torch.Generator().manual_seed(3), 0.0, 4096)
    assert torch.allclose(drawn, factor * u / (1 + (factor - 1) * u))
    assert torch.allclose(fam.sigmas(4, torch.Generator().manual_seed(3), 1.0, 4096), u)


def test_qwen_image_captions_are_read_after_its_template_as_diffusers_reads_them(tiny_qwen_image):
    """The caption inside Qwen-Image's system chat, the template's opening dropped (counted
    from the tokenizer: diffusers' 34 with Qwen's own, which ComfyUI ships), the last hidden
    states at the caption's own tokens: what diffusers' own prompt encoder gives, and the
    transformer reads it alike however far it is padded."""
    from transformers import Qwen2Tokenizer

    from comfy_server import NEWEST, HostUnavailable, host_source
    from comfyui_persona.models.families import get_family
    from comfyui_persona.models.families.qwen_image import TEMPLATE_TOKENS, template_tokens
    from comfyui_persona.models.loading import load_components

    try:
        qwen = Qwen2Tokenizer.from_pretrained(host_source(NEWEST) / "comfy" / "text_encoders" / "qwen25_tokenizer")
    except HostUnavailable as exc:
        pytest.skip(f"{NEWEST}: {exc}")
    assert template_tokens(qwen) == TEMPLATE_TOKENS == 34
    fam = get_family("qwen_image")
    comps = load_components("qwen_image", tiny_qwen_image)
    pipe = fam.pipeline(comps)
    prompts = ["a photo", "a photo of sks person"]
    with torch.no_grad():
        short, long = (fam.encode(comps, prompts, torch.device("cpu"), SimpleNamespace(llm_max_length=n))
                       for n in (40, 64))
        theirs, their_mask = pipe.encode_prompt(prompts, device=torch.device("cpu"))
    keep = theirs.shape[1]
    assert torch.equal(short["encoder_hidden_states_mask"][:, :keep], their_mask.float())
    assert not short["encoder_hidden_states_mask"][:, keep:].any()
    assert torch.allclose(short["encoder_hidden_states"][:, :keep], theirs * their_mask[..., None], atol=1e-5)
    transformer = comps.denoiser
    x = torch.randn(2, 16, 64)
    outs = []
    with torch.no_grad():
        for cond in (short, long, {"encoder_hidden_states": theirs, "encoder_hidden_states_mask": their_mask}):
            outs.append(transformer(hidden_states=x, encoder_hidden_states=cond["encoder_hidden_states"],
                                    encoder_hidden_states_mask=cond["encoder_hidden_states_mask"],
                                    timestep=torch.tensor([0.5, 0.5]), img_shapes=[[(1, 4, 4)]] * 2,
                                    return_dict=False)[0])
    assert torch.allclose(outs[0], outs[2], atol=1e-5) and torch.allclose(outs[1], outs[2], atol=1e-5)


def test_persona_generate_and_the_identity_gate_sample_qwen_image(qwen_image_run, tiny_qwen_image, tmp_path,
                                                                  astronaut, capsys):
    """``persona generate`` with a Qwen-Image LoRA: the family read from the LoRA, diffusers'
    Qwen-Image pipeline with the LoRA loaded (true CFG with a negative prompt), the gate scoring
    each attempt (a random-weight model draws no face, so the gate reports it)."""
    lora = qwen_image_run[1].lora_path
    assert_generates_behind_the_gate(tiny_qwen_image, lora, "qwen_image", "QwenImagePipeline", 4.0, tmp_path,
                                     astronaut, capsys)


def test_qwen_image_trains_with_the_switches_plans_choose(tiny_qwen_image, face_dataset, tmp_path):
    """Memory switches at test size: streamed and checkpointed blocks train exactly as without
    them (same losses), and an fp8 base with selective checkpointing trains with fp8 frozen
    weights."""
    from comfyui_persona.trainers.memory.quantize import Fp8Linear

    def run(name, **fields):
        events = {}
        cfg = tiny_config(tiny_qwen_image, face_dataset, tmp_path / name, family="qwen_image", steps=2,
                          llm_max_length=32, **fields)
        return train(cfg, Callbacks(on_start=lambda info: events.update(info))), events

    plain, _ = run("plain")
    streamed, _ = run("streamed", stream_blocks=1, gradient_checkpointing=True)
    assert [r["loss"] for r in streamed.records] == pytest.approx([r["loss"] for r in plain.records], abs=1e-6)
    fp8, events = run("fp8", quantize_base="fp8", mixed_precision="bf16", gradient_checkpointing=True,
                      checkpoint_blocks=1)
    bases = [m.base_layer for m in events["denoiser"].modules() if hasattr(m, "base_layer")]
    assert bases and all(isinstance(b, Fp8Linear) and b.weight.dtype == torch.float8_e4m3fn for b in bases)
    assert fp8.steps_done == 2 and all(math.isfinite(r["loss"]) for r in fp8.records)


# ComfyUI's own Wan 2.1 VAE (what it builds for qwen_image_vae.safetensors) at the test model's
# shape: "keys" prints its tensor names and shapes; "decode" loads a file strictly and decodes
COMFY_WAN_VAE = r"""
import json, sys
args = sys.argv[1:]
sys.argv = [sys.argv[0], "--cpu"]
sys.path.insert(0, args[0])
import torch
from safetensors.torch import load_file, save_file
import comfy.options
comfy.options.enable_args_parsing()
import comfy.ldm.wan.vae
vae = comfy.ldm.wan.vae.WanVAE(**json.loads(args[2])).eval()
if args[1] == "keys":
    print(json.dumps({k: list(v.shape) for k, v in vae.state_dict().items()}))
else:
    vae.load_state_dict(load_file(args[3]), strict=True)
    with torch.no_grad():
        image = vae.decode(load_file(args[4])["z"])
    save_file({"image": image.contiguous()}, args[5])
"""


def _wan_layout(vae_state: dict, wan_shapes: dict) -> dict:
    """Our VAE's tensors under the Wan 2.1 names, found by running diffusers' own Wan converter
    over tensors that carry their index."""
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    tagged = {k: torch.full(shape, float(i)) for i, (k, shape) in enumerate(wan_shapes.items())}
    names = list(wan_shapes)
    out = {}
    for key, tensor in convert_wan_vae_to_diffusers(tagged).items():
        wan = names[int(tensor.flatten()[0])]
        out[wan] = vae_state[key].reshape(wan_shapes[wan]).contiguous()
    assert out.keys() == wan_shapes.keys()
    return out


def test_qwen_image_loads_from_comfyui_separate_files(tiny_qwen_image, tmp_path, monkeypatch):
    """The files ComfyUI users keep: the transformer under ``model.diffusion_model.`` (fp8 as
    ComfyUI's fp8 file), Qwen2.5-VL as its file holds it (``model.`` language model, the vision
    tower and ``lm_head`` beside it), and the VAE in Wan 2.1's layout, which ComfyUI's own Wan
    VAE loads strictly and decodes to the image ours decodes."""
    import json
    import shutil
    import subprocess
    import sys

    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLForConditionalGeneration

    from comfy_files import in_layout
    from comfy_server import NEWEST, HostUnavailable, REPO, host_env, host_source
    from comfyui_persona.models.families import get_family
    from comfyui_persona.models.loading import load_components

    try:
        root = host_source(NEWEST)
    except HostUnavailable as exc:
        pytest.skip(f"{NEWEST}: {exc}")
    monkeypatch.setenv("PERSONA_CACHE", str(tmp_path / "cache"))
    ref = QwenImageTransformer2DModel.from_pretrained(tiny_qwen_image / "transformer")
    vae = AutoencoderKLQwenImage.from_pretrained(tiny_qwen_image / "vae")
    te = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_qwen_image / "text_encoder")
    files = {"base_model": tmp_path / "qwen_image_tiny_fp8.safetensors",
             "llm": tmp_path / "qwen_2.5_vl_tiny.safetensors", "vae": tmp_path / "qwen_image_vae.safetensors"}
    save_file(in_layout({f"model.diffusion_model.{k}": v.contiguous() for k, v in ref.state_dict().items()},
                        "fp8_e4m3fn", "model.diffusion_model."), str(files["base_model"]))
    # the language model as "model.*", the vision tower as "visual.*", and an lm_head
    state = te.state_dict()
    llm = {k.replace("model.language_model.", "model.").replace("model.visual.", "visual."): v.contiguous()
           for k, v in state.items()}
    llm.setdefault("lm_head.weight", state["model.language_model.embed_tokens.weight"].clone())
    save_file(llm, str(files["llm"]))
    shape = dict(dim=vae.config.base_dim, z_dim=vae.config.z_dim, dim_mult=list(vae.config.dim_mult),
                 num_res_blocks=vae.config.num_res_blocks, attn_scales=list(vae.config.attn_scales),
                 temperal_downsample=list(vae.config.temperal_downsample))
    def run(*a):
        return subprocess.run([sys.executable, "-c", COMFY_WAN_VAE, str(root), *a], capture_output=True, text=True,
                              timeout=300, env=host_env(NEWEST))

    keys = run("keys", json.dumps(shape))
    assert keys.returncode == 0, keys.stderr[-3000:]
    save_file(_wan_layout(vae.state_dict(), json.loads(keys.stdout.strip().splitlines()[-1])), str(files["vae"]))
    configs = tmp_path / "cache" / "configs" / "qwen_image"  # the test model's shapes, not the published ones
    shutil.copytree(REPO / "configs" / "qwen_image", configs)
    for sub in ("transformer", "text_encoder", "vae", "tokenizer"):
        shutil.rmtree(configs / sub, ignore_errors=True)
        shutil.copytree(tiny_qwen_image / sub, configs / sub, ignore=shutil.ignore_patterns("*.safetensors"))
    (configs / ".complete").write_text("qwen_image")

    comps = load_components("qwen_image", files["base_model"], llm=files["llm"], vae=files["vae"])
    own = comps.denoiser.state_dict()
    for k, v in ref.state_dict().items():
        if v.ndim == 2:  # fp8: within e4m3's rounding (3 mantissa bits)
            assert torch.allclose(own[k].float(), v, rtol=0.07, atol=2e-3), k
        else:
            assert torch.equal(own[k], v), k
    x = torch.randn(1, 16, 64)
    with torch.no_grad():  # the rotary tables no file holds are made as the model makes them
        a = comps.denoiser.float()(hidden_states=x, encoder_hidden_states=torch.randn(1, 5, 32),
                                   timestep=torch.tensor([0.5]), encoder_hidden_states_mask=torch.ones(1, 5),
                                   img_shapes=[[(1, 4, 4)]], return_dict=False)[0]
    assert torch.isfinite(a).all()
    assert type(comps.text_encoder).__name__ == "Qwen2_5_VLTextModel"  # the vision tower is not read
    fam = get_family("qwen_image")
    with torch.no_grad():
        ours = fam.encode(comps, ["a photo of sks person"], torch.device("cpu"), SimpleNamespace(llm_max_length=32))
        comps.text_encoder = te
        full = fam.encode(comps, ["a photo of sks person"], torch.device("cpu"), SimpleNamespace(llm_max_length=32))
    assert all(torch.allclose(ours[k], full[k], atol=1e-6) for k in ours)
    z = torch.randn(1, 16, 1, 4, 4)
    save_file({"z": z}, str(tmp_path / "z.safetensors"))
    decoded = run("decode", json.dumps(shape), str(files["vae"]), str(tmp_path / "z.safetensors"),
                  str(tmp_path / "image.safetensors"))
    assert decoded.returncode == 0, decoded.stderr[-3000:]
    theirs = load_file(str(tmp_path / "image.safetensors"))["image"][:, :, 0]
    with torch.no_grad():
        mine = fam.decode_latents(comps.vae, z[:, :, 0])
    assert mine.shape == theirs.shape == (1, 3, 32, 32)
    assert torch.allclose(mine, theirs.clamp(-1, 1), atol=1e-5)  # diffusers clamps its decode, ComfyUI later
