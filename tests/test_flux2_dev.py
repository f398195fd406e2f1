"""FLUX.2 dev LoRA training on a tiny model of its shape (klein's blocks with a guidance
embedding; Mistral3 read at hidden states 10/20/30 after Mistral's system and user turns,
tokenized by a tekken vocabulary converted as Mistral's own is), and what reads our files
independently: ComfyUI 0.33's own Mistral tokenizer and text encoder (they give the
conditioning we train on), its Flux2 model and LoRA key map, and diffusers' Flux2Pipeline and
its LoRA loader."""
from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfy_lora_checks import COMFY_FLUX2_CHECK, assert_every_key_maps
from trainer_helpers import assert_both_lora_files_apply_alike, assert_generates_behind_the_gate, \
    assert_trained_with_every_feature, flux2_transformer_out, tiny_config, train_every_feature

LENGTH = 256  # the tiny tekken reads Mistral's system turn byte by byte: ~170 tokens with a caption


@pytest.fixture(scope="module")
def flux2_dev_run(tiny_flux2_dev, face_dataset, tmp_path_factory):
    """Every feature at once (trainer_helpers.EVERY_FEATURE), guidance embedded."""
    return train_every_feature(tiny_flux2_dev, face_dataset, tmp_path_factory.mktemp("flux2_dev") / "run",
                               "flux2_dev", llm_max_length=LENGTH)


@pytest.mark.quick
def test_flux2_dev_lora_trains_with_every_feature(flux2_dev_run):
    assert_trained_with_every_feature(flux2_dev_run, "flux2_dev", "flux-2-dev")


def test_flux2_dev_lora_files_apply_the_trained_adapters_in_diffusers(flux2_dev_run, tiny_flux2_dev):
    """The kohya file (BFL names, fused qkv) and the diffusers-format file, each loaded by
    diffusers' Flux2Pipeline LoRA loader, give the same transformer, unlike the base."""
    from diffusers import Flux2Pipeline

    _cfg, result, _ = flux2_dev_run
    tensors = load_file(str(result.lora_path))
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in tensors
    assert_both_lora_files_apply_alike(Flux2Pipeline, tiny_flux2_dev, result, flux2_transformer_out)


def test_flux2_dev_lora_applies_fully_in_comfyui(flux2_dev_run, tiny_flux2_dev, comfy, tmp_path):
    """ComfyUI's own Flux2 model, built from our BFL-layout file with its guidance embedding,
    loads it key for key (strict), and its LoRA loader maps every key of the exported file."""
    if "flux2" not in (comfy.root / "comfy" / "model_detection.py").read_text():
        pytest.skip(f"{comfy.host}: this ComfyUI predates FLUX.2")
    from diffusers import Flux2Transformer2DModel

    from comfyui_persona.models.families.flux2.keys import diffusers_to_bfl

    _cfg, result, _ = flux2_dev_run
    ref = Flux2Transformer2DModel.from_pretrained(tiny_flux2_dev / "transformer")
    bfl = diffusers_to_bfl(ref.state_dict(), dict(ref.config))
    assert any(k.startswith("guidance_in.") for k in bfl)
    path = tmp_path / "flux2_dev_bfl.safetensors"
    save_file({f"model.diffusion_model.{k}": v.contiguous() for k, v in bfl.items()}, str(path))
    assert_every_key_maps(comfy, COMFY_FLUX2_CHECK, path, result.lora_path,
                          {"num_heads": ref.config.num_attention_heads, "axes_dim": list(ref.config.axes_dims_rope)})


def write_mistral_file(tiny_flux2_dev, path, layers: int | None = None) -> None:
    """Mistral's language model as ComfyUI's file holds it (``model.*``, tokenizer inside as
    ``tekken_model``); ``layers`` keeps only the first ones (ComfyUI's pruned file: 30)."""
    state = load_file(str(tiny_flux2_dev / "text_encoder" / "model.safetensors"))  # Mistral3's own file layout
    llm = {k.removeprefix("language_model."): v for k, v in state.items() if k.startswith("language_model.model.")}
    if layers is not None:
        llm = {k: v for k, v in llm.items() if not (k.startswith("model.layers.") and int(k.split(".")[2]) >= layers)
               and k != "model.norm.weight"}
    tekken = (tiny_flux2_dev / "tokenizer" / "tekken.json").read_bytes()
    llm["tekken_model"] = torch.frombuffer(bytearray(tekken), dtype=torch.uint8)
    save_file(llm, str(path))


def write_dev_files(tiny_flux2_dev, folder) -> dict:
    from diffusers import Flux2Transformer2DModel

    from comfyui_persona.models.families.flux2.keys import diffusers_to_bfl

    folder.mkdir(parents=True, exist_ok=True)
    ref = Flux2Transformer2DModel.from_pretrained(tiny_flux2_dev / "transformer")
    files = {"base_model": folder / "flux2_dev_tiny.safetensors", "llm": folder / "mistral_3_small_tiny.safetensors",
             "vae": folder / "flux2-vae.safetensors"}
    save_file({f"model.diffusion_model.{k}": v.contiguous()
               for k, v in diffusers_to_bfl(ref.state_dict(), dict(ref.config)).items()}, str(files["base_model"]))
    write_mistral_file(tiny_flux2_dev, files["llm"])
    from diffusers import AutoencoderKLFlux2

    from comfyui_persona.models.keys.ldm import vae_to_ldm

    vae = AutoencoderKLFlux2.from_pretrained(tiny_flux2_dev / "vae")
    state = vae.state_dict()
    stats = {k: v for k, v in state.items() if k.startswith("bn.") and k != "bn.num_batches_tracked"}
    ldm = vae_to_ldm({k: v for k, v in state.items() if not k.startswith("bn.")}, vae.config)
    save_file({**{k.removeprefix("first_stage_model."): v for k, v in ldm.items()}, **stats}, str(files["vae"]))
    return files


def _configs(tiny_flux2_dev, tmp_path):
    """The test model's config folder without its tokenizer (the text encoder file brings it)."""
    import shutil

    config = tmp_path / "configs"
    shutil.copytree(tiny_flux2_dev, config, ignore=shutil.ignore_patterns("*.safetensors", "tokenizer"))
    return config


def test_flux2_dev_loads_from_comfyui_separate_files(tiny_flux2_dev, tmp_path, monkeypatch):
    """ComfyUI's files: the BFL-layout transformer with its guidance embedding, Mistral's
    language model with the tokenizer inside it (read from there: no tokenizer folder is
    given), the VAE; and ComfyUI's 30-layer pruned Mistral file reads the same conditioning
    (its last state without the final norm)."""
    from diffusers import Flux2Transformer2DModel

    from comfyui_persona.models.families import get_family
    from comfyui_persona.models.loading import load_components

    monkeypatch.setenv("PERSONA_CACHE", str(tmp_path / "cache"))
    files = write_dev_files(tiny_flux2_dev, tmp_path / "files")
    config = _configs(tiny_flux2_dev, tmp_path)
    comps = load_components("flux2_dev", files["base_model"], llm=files["llm"], vae=files["vae"], config_dir=config)
    ref = Flux2Transformer2DModel.from_pretrained(tiny_flux2_dev / "transformer").state_dict()
    own = comps.denoiser.state_dict()
    assert own.keys() == ref.keys() and all(torch.equal(own[k], v) for k, v in ref.items())
    assert comps.denoiser.config.guidance_embeds
    assert type(comps.text_encoder).__name__ == "MistralModel"  # the vision tower is not read
    fam = get_family("flux2_dev")
    folder = load_components("flux2_dev", tiny_flux2_dev)
    prompts = ["a photo of sks person"]
    with torch.no_grad():
        ours = fam.encode(comps, prompts, torch.device("cpu"), SimpleNamespace(llm_max_length=LENGTH))
        full = fam.encode(folder, prompts, torch.device("cpu"), SimpleNamespace(llm_max_length=LENGTH))
    assert torch.allclose(ours["encoder_hidden_states"], full["encoder_hidden_states"], atol=1e-5)
    write_mistral_file(tiny_flux2_dev, files["llm"].with_name("pruned.safetensors"), layers=30)
    pruned = load_components("flux2_dev", files["base_model"], llm=files["llm"].with_name("pruned.safetensors"),
                             vae=files["vae"], config_dir=config)
    assert pruned.text_encoder.config.num_hidden_layers == 30
    with torch.no_grad():
        cut = fam.encode(pruned, prompts, torch.device("cpu"), SimpleNamespace(llm_max_length=LENGTH))
    assert torch.allclose(cut["encoder_hidden_states"], full["encoder_hidden_states"], atol=1e-5)
    short = tmp_path / "short.safetensors"
    write_mistral_file(tiny_flux2_dev, short, layers=20)
    with pytest.raises(ValueError, match="20 Mistral layers"):
        load_components("flux2_dev", files["base_model"], llm=short, vae=files["vae"], config_dir=config)
    klein = tmp_path / "klein.safetensors"  # dev's file without its guidance embedding: refused by its header
    save_file({k: v for k, v in load_file(str(files["base_model"])).items() if "guidance_in." not in k}, str(klein))
    with pytest.raises(ValueError, match="without a guidance embedding.*family flux2"):
        load_components("flux2_dev", klein, llm=files["llm"], vae=files["vae"], config_dir=config)


COMFY_MISTRAL = r"""
import functools, json, sys
root, llm, config = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
prompts = sys.argv[4:]
sys.argv = [sys.argv[0], "--cpu"]  # ComfyUI reads its own command line on import
sys.path.insert(0, root)
import comfy.options
comfy.options.enable_args_parsing()
import torch
from safetensors.torch import load_file
import comfy.sd1_clip, comfy.text_encoders.flux as flux, comfy.text_encoders.llama as llama
sd = load_file(llm)
tok = flux.Flux2Tokenizer(tokenizer_data={"tekken_model": sd["tekken_model"]})
# ComfyUI's own Mistral3_24BModel at the test size (its class fixes the published width)
clip = functools.partial(comfy.sd1_clip.SDClipModel, layer=[10, 20, 30], layer_idx=None, textmodel_json_config=config,
                         special_tokens={"start": 1, "pad": 0}, layer_norm_hidden_state=False,
                         model_class=llama.Mistral3Small24B, enable_attention_masks=True, return_attention_masks=True)
te = flux.Flux2TEModel(dtype=torch.float32, clip_model=clip)
te.load_sd({k: v for k, v in sd.items() if k != "tekken_model"})
out = {}
for prompt in prompts:
    tokens = tok.tokenize_with_weights(prompt)
    cond, _pooled, _extra = te.encode_token_weights(tokens)
    out[prompt] = {"ids": [t[0] for t in tokens["mistral3_24b"][0]], "cond": cond[0].tolist()}
print(json.dumps(out))
"""


def test_flux2_dev_captions_are_read_as_comfyuis_mistral_encoder_reads_them(tiny_flux2_dev, tmp_path):
    """ComfyUI 0.33's own Flux2 tokenizer (its tekken reader, on the tokenizer inside the
    file) and its Mistral3 text encoder at the test size, loaded from our file, give the
    token ids and the ``[L, 3 x width]`` conditioning we read; ours has zeros in front up to
    512 where ComfyUI's FLUX.2 model pads its conditioning with zeros in front to 512."""
    from comfy_server import NEWEST, HostUnavailable, host_env, host_source
    from comfyui_persona.models.families import get_family
    from comfyui_persona.models.families.flux2_dev import TEMPLATE
    from comfyui_persona.models.loading import load_components

    try:
        root = host_source(NEWEST)
    except HostUnavailable as exc:
        pytest.skip(f"{NEWEST}: {exc}")
    llm = tmp_path / "mistral.safetensors"
    write_mistral_file(tiny_flux2_dev, llm)
    text = json.loads((tiny_flux2_dev / "text_encoder" / "config.json").read_text())["text_config"]
    shape = {k: text[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                  "num_attention_heads", "num_key_value_heads")}
    prompts = ["a photo of sks person", "sks person, smiling, in a garden"]
    run = subprocess.run([sys.executable, "-c", COMFY_MISTRAL, str(root), str(llm), json.dumps(shape), *prompts],
                         capture_output=True, text=True, timeout=300, env=host_env(NEWEST))
    assert run.returncode == 0, run.stderr[-3000:]
    theirs = json.loads(run.stdout.strip().splitlines()[-1])
    fam = get_family("flux2_dev")
    comps = load_components("flux2_dev", tiny_flux2_dev)
    with torch.no_grad():
        ours = fam.encode(comps, prompts, torch.device("cpu"), None)["encoder_hidden_states"]
    assert ours.shape == (2, 512, 96)
    for i, p in enumerate(prompts):
        ids = [comps.tokenizer.bos_token_id, *comps.tokenizer(TEMPLATE.format(p), add_special_tokens=False).input_ids]
        assert theirs[p]["ids"] == ids
        cond = torch.tensor(theirs[p]["cond"])
        n = len(ids)
        assert cond.shape == (n, 96)
        assert not ours[i, :512 - n].any()
        assert torch.allclose(ours[i, 512 - n:], cond, atol=1e-4), (ours[i, 512 - n:] - cond).abs().max()


def test_a_single_flux2_dev_file_is_planned_at_its_own_size(tmp_path):
    """A transformer file 6144 wide is FLUX.2 dev (8 double, 48 single blocks, ~32 B
    parameters, Mistral Small 3.1 24B); a klein file given as dev is refused by name, and a
    klein transformer (no guidance embedding) by the loader."""
    from comfyui_persona.models.architectures import meta_components
    from comfyui_persona.models.families import get_family

    dev, klein = tmp_path / "dev.safetensors", tmp_path / "klein.safetensors"
    save_file({"model.diffusion_model.img_in.weight": torch.zeros(6144, 128, dtype=torch.bfloat16)}, str(dev))
    save_file({"img_in.weight": torch.zeros(3072, 128, dtype=torch.bfloat16)}, str(klein))
    comps = meta_components("flux2_dev", str(dev))
    config = comps.denoiser.config
    assert (config.num_layers, config.num_single_layers, config.guidance_embeds) == (8, 48, True)
    assert 31e9 < sum(p.numel() for p in comps.denoiser.parameters()) < 33e9
    assert config.joint_attention_dim == 3 * comps.text_encoder.config.text_config.hidden_size == 3 * 5120
    with pytest.raises(ValueError, match="3072 wide.*family flux2"):
        get_family("flux2_dev").published_size(klein)
    with pytest.raises(ValueError, match="6144.*flux2_dev"):
        get_family("flux2").published_size(dev)


def test_flux2_dev_single_file_needs_its_text_encoder_and_vae(face_dataset, tmp_path):
    from comfyui_persona.core.config import ConfigError

    f = tmp_path / "flux2_dev.safetensors"
    save_file({"x": torch.zeros(1)}, str(f))
    with pytest.raises(ConfigError, match="set llm .*mistral.* and vae"):
        tiny_config(f, face_dataset, tmp_path / "run", family="flux2_dev").check_paths()


def test_persona_generate_and_the_identity_gate_sample_flux2_dev(flux2_dev_run, tiny_flux2_dev, tmp_path, astronaut,
                                                                 capsys):
    """``persona generate`` with a FLUX.2 dev LoRA: the family read from the LoRA, diffusers'
    Flux2Pipeline (prompt through Mistral's chat template, guidance embedded) with the LoRA
    loaded, the gate scoring each attempt."""
    assert_generates_behind_the_gate(tiny_flux2_dev, flux2_dev_run[1].lora_path, "flux2_dev", "Flux2Pipeline",
                                     4.0, tmp_path, astronaut, capsys, negative_acts=False)
