"""Z-Image LoRA training on a tiny model of its shape (refiners, single-stream layers, a Qwen3
text encoder, FLUX.1's VAE), every training feature the family offers, and the exported
files read by independent consumers: diffusers' Z-Image LoRA loader, and ComfyUI's own
Z-Image model and LoRA key map. The objective itself is proven by memorisation
(tests/test_memorisation.py)."""
from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfy_lora_checks import COMFY_Z_IMAGE_CHECK, assert_every_key_maps
from trainer_helpers import assert_both_lora_files_apply_alike, assert_generates_behind_the_gate, \
    assert_trained_with_every_feature, tiny_config, train_every_feature
from comfyui_persona.trainers.loop import Callbacks, train

def comfyui_shape(config) -> dict:
    """What ComfyUI's code fixes at Z-Image's published size, at the test size."""
    return {"config": {"n_heads": config.n_heads, "n_kv_heads": config.n_kv_heads, "axes_dims": list(config.axes_dims),
                       "axes_lens": list(config.axes_lens), "rope_theta": config.rope_theta,
                       "n_refiner_layers": config.n_refiner_layers, "ffn_dim_multiplier": 8.0 / 3.0, "multiple_of": 1,
                       "z_image_modulation": True, "time_scale": config.t_scale, "pad_tokens_multiple": 32},
            "timestep_embedder": [1024, min(config.dim, 256)]}


@pytest.fixture(scope="module")
def z_image_run(tiny_z_image, face_dataset, tmp_path_factory):
    """Every feature at once (trainer_helpers.EVERY_FEATURE), the identity loss through
    Z-Image's x0."""
    return train_every_feature(tiny_z_image, face_dataset, tmp_path_factory.mktemp("z_image") / "run", "z_image",
                               llm_max_length=64)


@pytest.mark.quick
def test_z_image_lora_trains_with_every_feature(z_image_run):
    assert_trained_with_every_feature(z_image_run, "z_image", "z-image")


def test_z_image_lora_files_apply_the_trained_adapters_in_diffusers(z_image_run, tiny_z_image):
    """The ComfyUI file (``diffusion_model.<module>``, lora_down/lora_up/alpha) and the
    diffusers-format file, each loaded by diffusers' Z-Image LoRA loader into a fresh pipeline,
    give the same transformer, and it differs from the base."""
    from diffusers import ZImagePipeline

    cfg, result, _ = z_image_run
    tensors = load_file(str(result.lora_path))
    assert tensors and all(k.startswith("diffusion_model.") for k in tensors)
    assert {k.rsplit(".", 2)[-2] if k.endswith(".weight") else "alpha" for k in tensors} == \
        {"lora_down", "lora_up", "alpha"}
    assert "diffusion_model.layers.0.attention.to_q.lora_down.weight" in tensors
    torch.manual_seed(0)
    x = [torch.randn(16, 1, 16, 16)]
    caption = [torch.randn(20, 32)]
    t = torch.tensor([0.3])

    def forward(transformer):
        with torch.no_grad():
            return transformer(x, t, caption, return_dict=False)[0][0]

    assert_both_lora_files_apply_alike(ZImagePipeline, tiny_z_image, result, forward)


def test_z_image_lora_applies_fully_in_comfyui(z_image_run, tiny_z_image, comfy, tmp_path):
    """ComfyUI's own Z-Image model takes our original-layout transformer key for key (strict),
    and its LoRA loader maps every key of the exported file (none 'not loaded')."""
    if not (comfy.root / "comfy" / "ldm" / "lumina").is_dir():
        pytest.skip(f"{comfy.host}: this ComfyUI predates Z-Image")
    from diffusers import ZImageTransformer2DModel

    from comfyui_persona.models.families.z_image.keys import diffusers_to_original

    _cfg, result, _ = z_image_run
    ref = ZImageTransformer2DModel.from_pretrained(tiny_z_image / "transformer")
    path = tmp_path / "z_image_original.safetensors"
    save_file({f"model.diffusion_model.{k}": v.contiguous() for k, v in diffusers_to_original(ref.state_dict()).items()},
              str(path))
    assert_every_key_maps(comfy, COMFY_Z_IMAGE_CHECK, path, result.lora_path, comfyui_shape(ref.config))


@pytest.mark.quick
def test_z_image_original_layout_round_trips(tiny_z_image):
    from diffusers import ZImageTransformer2DModel

    from comfyui_persona.models.families.z_image.keys import diffusers_to_original, original_to_diffusers

    state = ZImageTransformer2DModel.from_pretrained(tiny_z_image / "transformer").state_dict()
    original = diffusers_to_original(state)
    assert "layers.0.attention.qkv.weight" in original and "final_layer.linear.weight" in original
    assert not any("to_q" in k or "all_x_embedder" in k for k in original)
    back = original_to_diffusers(original)
    assert back.keys() == state.keys() and all(torch.equal(back[k], v) for k, v in state.items())


@pytest.mark.parametrize("layout", [None, "fp8_e4m3fn"])
def test_z_image_loads_from_comfyui_separate_files(tiny_z_image, tmp_path, monkeypatch, layout):
    """The files ComfyUI users keep: the transformer in the original layout (fp32, or fp8 as
    ComfyUI's fp8 files), the Qwen3 text encoder as a causal LM's file, the VAE."""
    from diffusers import ZImageTransformer2DModel
    from transformers import Qwen3Model

    from comfy_files import write_z_image_files
    from comfyui_persona.models.loading import load_components

    monkeypatch.setenv("PERSONA_CACHE", str(tmp_path / "cache"))
    files = write_z_image_files(tiny_z_image, tmp_path / "files", tmp_path / "cache", layout)
    comps = load_components("z_image", files["base_model"], llm=files["llm"], vae=files["vae"])
    ref = ZImageTransformer2DModel.from_pretrained(tiny_z_image / "transformer").state_dict()
    own = comps.denoiser.state_dict()
    assert own.keys() == ref.keys()
    for k, v in ref.items():
        if layout:  # fp8: within e4m3's rounding (3 mantissa bits)
            assert torch.allclose(own[k].float(), v, rtol=0.07, atol=2e-3), k
        else:
            assert torch.equal(own[k], v), k
    te = Qwen3Model.from_pretrained(tiny_z_image / "text_encoder")
    ids = comps.tokenizer(["a photo of sks person"], return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(comps.text_encoder(ids).last_hidden_state, te(ids).last_hidden_state)


def test_z_image_single_file_needs_its_text_encoder_and_vae(face_dataset, tmp_path):
    from comfyui_persona.core.config import ConfigError

    f = tmp_path / "z_image.safetensors"
    save_file({"x": torch.zeros(1)}, str(f))
    with pytest.raises(ConfigError, match="set llm .* and vae"):
        tiny_config(f, face_dataset, tmp_path / "run", family="z_image").check_paths()
    with pytest.raises((ConfigError, ValueError), match="use_dora"):
        tiny_config(f, face_dataset, tmp_path / "run", family="z_image", use_dora=True)
    with pytest.raises((ConfigError, ValueError), match="separate text encoder and VAE files"):
        tiny_config(f, face_dataset, tmp_path / "run", family="sdxl", llm=str(f))


@pytest.mark.quick
def test_z_image_x0_from_the_prediction_inverts_the_noising():
    """The identity loss decodes x0 = x_t + sigma * pred, Z-Image predicting x0 - noise."""
    from comfyui_persona.models.families import Prediction, get_family

    fam = get_family("z_image")
    latents, noise = torch.randn(2, 16, 6, 8), torch.randn(2, 16, 6, 8)
    sigma = torch.tensor([0.2, 0.9])
    noisy = (1 - sigma.view(-1, 1, 1, 1)) * latents + sigma.view(-1, 1, 1, 1) * noise
    p = Prediction(latents - noise, latents - noise, noisy, sigma * 1000)
    assert torch.allclose(fam.predicted_x0(None, p), latents, atol=1e-5)


def test_z_image_captions_are_read_in_qwens_chat_turn_at_their_own_length(tiny_z_image):
    """The caption inside Qwen's user turn (as diffusers' pipeline and ComfyUI template it),
    the second-to-last hidden states, padding masked out: a caption's features do not depend
    on the length it is padded to."""
    from types import SimpleNamespace

    from comfyui_persona.models.families import get_family
    from comfyui_persona.models.loading import load_components

    fam = get_family("z_image")
    comps = load_components("z_image", tiny_z_image)
    rendered = comps.tokenizer.apply_chat_template([{"role": "user", "content": "a photo"}], tokenize=False,
                                                   add_generation_prompt=True, enable_thinking=True)
    assert rendered == "<|im_start|>user\na photo<|im_end|>\n<|im_start|>assistant\n"
    with torch.no_grad():
        short, long = (fam.encode(comps, ["a photo", "a photo of sks person"], torch.device("cpu"),
                                  SimpleNamespace(llm_max_length=n)) for n in (64, 128))
        ids = comps.tokenizer([rendered], return_tensors="pt").input_ids
        direct = comps.text_encoder(ids, output_hidden_states=True).hidden_states[-2][0]
    a, b = fam.captions(short, torch.float32), fam.captions(long, torch.float32)
    assert [len(x) for x in a] == [len(x) for x in b] == [ids.shape[1], int(short["cap_mask"][1].sum())]
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(a, b))
    assert torch.allclose(a[0], direct, atol=1e-5)


def _adapter(model, path, rank=2, seed=1):
    """A LoRA file in ComfyUI's Z-Image layout (``diffusion_model.<module>``, lora_A/lora_B, no
    alpha) on every attention projection of ``model``: a stand-in de-distillation adapter."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in model.named_modules():
        if name.endswith(("attention.to_q", "attention.to_k", "attention.to_v")):
            tensors[f"diffusion_model.{name}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=gen)
            tensors[f"diffusion_model.{name}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=gen) * 0.1
    save_file(tensors, str(path))
    return tensors


def test_a_training_adapter_is_merged_while_training_and_never_exported(tiny_z_image, face_dataset, tmp_path):
    """Training on a distilled model with a de-distillation adapter: the frozen weights the run
    trains against are the base plus the adapter's delta, the adapter file and the base are
    left unchanged, and the exported LoRA holds the run's own layers only."""
    from diffusers import ZImageTransformer2DModel

    base = ZImageTransformer2DModel.from_pretrained(tiny_z_image / "transformer")
    adapter = _adapter(base, tmp_path / "adapter.safetensors")
    before = (tmp_path / "adapter.safetensors").read_bytes()
    events = {}
    cfg = tiny_config(tiny_z_image, face_dataset, tmp_path / "run", family="z_image", steps=2, llm_max_length=64,
                      training_adapter=str(tmp_path / "adapter.safetensors"), target_modules=["to_out.0"])
    result = train(cfg, Callbacks(on_start=lambda info: events.update(info)))
    assert result.steps_done == 2
    trained = events["denoiser"]
    name = "layers.0.attention.to_q"
    down, up = adapter[f"diffusion_model.{name}.lora_A.weight"], adapter[f"diffusion_model.{name}.lora_B.weight"]
    expected = base.get_submodule(name).weight + up @ down  # alpha absent: alpha = rank, scale 1
    assert torch.allclose(trained.get_submodule(name).weight.float(), expected, atol=1e-5)
    assert (tmp_path / "adapter.safetensors").read_bytes() == before
    assert torch.equal(ZImageTransformer2DModel.from_pretrained(tiny_z_image / "transformer")
                       .get_submodule(name).weight, base.get_submodule(name).weight)
    exported = load_file(str(result.lora_path))
    assert exported and all(".attention.to_out.0." in k for k in exported)  # the run's layers, no adapter


def test_a_training_adapter_for_another_model_is_refused_by_name(tiny_z_image, tiny_flux, face_dataset, tmp_path):
    from diffusers import FluxTransformer2DModel

    from comfyui_persona.core.config import ConfigError

    flux = FluxTransformer2DModel.from_pretrained(tiny_flux / "transformer")
    tensors = {f"transformer.{n}.lora_A.weight": torch.zeros(2, m.in_features) for n, m in flux.named_modules()
               if n.endswith("attn.to_q")}
    tensors.update({k.replace("lora_A", "lora_B"): torch.zeros(32, 2) for k in tensors})
    save_file(tensors, str(tmp_path / "flux_adapter.safetensors"))
    cfg = tiny_config(tiny_z_image, face_dataset, tmp_path / "run", family="z_image", steps=1, llm_max_length=64,
                      training_adapter=str(tmp_path / "flux_adapter.safetensors"))
    with pytest.raises(ValueError, match=r"training_adapter: 'flux_adapter.safetensors' names \d+ layers that are "
                                         r"not linear layers of this ZImageTransformer2DModel"):
        train(cfg)
    (tmp_path / "adapter.pt").write_bytes(b"x")
    with pytest.raises(ConfigError, match="training_adapter: 'adapter.pt' is not a .safetensors file"):
        tiny_config(tiny_z_image, face_dataset, tmp_path / "run2", family="z_image",
                    training_adapter=str(tmp_path / "adapter.pt")).check_paths()


def test_persona_generate_and_the_identity_gate_sample_z_image(z_image_run, tiny_z_image, tmp_path, astronaut,
                                                              capsys):
    """``persona generate`` with a Z-Image LoRA: the family read from the LoRA, Z-Image's own
    pipeline with the LoRA loaded, the gate scoring each attempt (a random-weight model draws
    no face, so the gate reports it and keeps the best attempt)."""
    assert_generates_behind_the_gate(tiny_z_image, z_image_run[1].lora_path, "z_image", "ZImagePipeline",
                                     0.0, tmp_path, astronaut, capsys, negative_acts=False)


def test_z_image_trains_with_the_switches_its_plans_choose(tiny_z_image, face_dataset, tmp_path):
    """What the published-size plans set for Z-Image, at test size: streamed and checkpointed
    blocks train exactly as without them (same losses), and an fp8 base with selective
    checkpointing trains with fp8 frozen weights."""
    from comfyui_persona.trainers.memory.quantize import Fp8Linear

    def run(name, **fields):
        events = {}
        cfg = tiny_config(tiny_z_image, face_dataset, tmp_path / name, family="z_image", steps=2, llm_max_length=64,
                          **fields)
        return train(cfg, Callbacks(on_start=lambda info: events.update(info))), events

    plain, _ = run("plain")
    streamed, _ = run("streamed", stream_blocks=4, gradient_checkpointing=True)
    assert [r["loss"] for r in streamed.records] == pytest.approx([r["loss"] for r in plain.records], abs=1e-6)
    fp8, events = run("fp8", quantize_base="fp8", mixed_precision="bf16", gradient_checkpointing=True,
                      checkpoint_blocks=3)
    bases = [m.base_layer for m in events["denoiser"].modules() if hasattr(m, "base_layer")]
    assert bases and all(isinstance(b, Fp8Linear) and b.weight.dtype == torch.float8_e4m3fn for b in bases)
    assert fp8.steps_done == 2 and all(math.isfinite(r["loss"]) for r in fp8.records)
