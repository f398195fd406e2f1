"""Training from the model files ComfyUI users have (models/file_weights.py): fp8 in each of
ComfyUI's layouts read back as the weights they store, block-scaled layers refused by name, an
fp8 scaled SD1.5 checkpoint trained and its LoRA applied by ComfyUI's own loader on that same
checkpoint, an fp8 SDXL checkpoint trained and its LoRA mapped key for key by ComfyUI's SDXL
model built from that file, and FLUX.1 trained from an fp8 transformer and an fp8 T5 with every
LoRA key mapped by ComfyUI."""
from __future__ import annotations

import gc
import json
import math
import re
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfy_graphs import lora_graph
from comfy_files import LAYOUTS, in_layout, use_tiny_flux_configs, write_flux_files, write_sdxl_checkpoint
from comfyui_persona.models.file_weights import dequantize, loadable_file, needs_dequantizing, read_weights

# the largest rounding error of each layout, relative to a weight (e4m3: 3 mantissa bits,
# e5m2: 2), plus the spacing of the smallest (subnormal) values for tiny weights
TOLERANCE = {"fp8_e4m3fn": (2 ** -4, 2 ** -9), "fp8_e5m2": (2 ** -3, 2 ** -16),
             "fp8_scaled": (2 ** -4, 0.0), "fp8_weight_scale": (2 ** -4, 0.0), "bf16": (2 ** -8, 0.0)}


def _weights():
    gen = torch.Generator().manual_seed(0)
    return {"blocks.0.attn.weight": torch.randn(32, 16, generator=gen) * 0.003,  # small, as trained weights are
            "blocks.0.attn.bias": torch.randn(32, generator=gen),
            "blocks.0.conv.weight": torch.randn(8, 4, 3, 3, generator=gen) * 0.05,
            "norm.weight": torch.ones(16)}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_reads_back_the_weights_it_stores(tmp_path, layout):
    original = _weights()
    path = tmp_path / f"{layout}.safetensors"
    save_file(in_layout(original, layout), str(path))
    assert needs_dequantizing(path) == (layout != "bf16")
    read = read_weights(path)
    assert read.keys() == original.keys()  # scales and markers gone
    rel, absolute = TOLERANCE[layout]
    for key, value in original.items():
        scale = value.abs().max() if layout in ("fp8_scaled", "fp8_weight_scale") else 0.0
        bound = rel * value.abs() + absolute + scale * 2 ** -9 + 1e-12
        assert (read[key].float() - value).abs().le(bound).all(), (key, (read[key].float() - value).abs().max())
    if layout in ("fp8_scaled", "fp8_weight_scale"):  # read without its scale the weight would be far off
        raw = load_file(str(path))["blocks.0.attn.weight"].float()
        assert (raw - original["blocks.0.attn.weight"]).abs().max() > 100 * original["blocks.0.attn.weight"].abs().max()


def test_a_scaled_weight_is_scaled_in_a_copy(tmp_path):
    """A weight with a scale beside it is scaled into a new tensor whatever its dtype (a bf16
    weight with a ``scale_weight``, as a hand-made or hostile file may hold): the caller's tensor
    and the file stay as they were."""
    weight = torch.tensor([[1.0, -2.0], [0.5, 4.0]], dtype=torch.bfloat16)
    tensors = {"blocks.0.attn.weight": weight.clone(), "blocks.0.attn.scale_weight": torch.tensor(0.25)}
    path = tmp_path / "bf16-scaled.safetensors"
    save_file(tensors, str(path))
    before = path.read_bytes()
    expected = weight.float() * 0.25
    assert torch.equal(read_weights(path)["blocks.0.attn.weight"].float(), expected)
    assert path.read_bytes() == before
    assert torch.equal(dequantize(tensors, "model.safetensors")["blocks.0.attn.weight"].float(), expected)
    assert torch.equal(tensors["blocks.0.attn.weight"], weight)


_READ_PEAK = """
import resource, sys
from comfyui_persona.models.file_weights import read_weights

def rss_mb(field):
    return int(open("/proc/self/status").read().split(field + ":")[1].split()[0]) / 1024

before = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, rss_mb("VmRSS"))
read = read_weights(sys.argv[1])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
out = sum(v.numel() * v.element_size() for v in read.values()) / 2 ** 20
print(peak - before, rss_mb("VmRSS") - before, out)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process's peak memory from Linux's /proc")
def test_reading_an_fp8_file_takes_its_bf16_size_and_no_more(tmp_path):
    """The host-memory check counts an fp8 file at its bf16 size (trainers/memory/host_memory.py):
    reading one must not take more. A file of 32 scaled-fp8 weights (128 MB, 256 MB as bf16) is
    read in a fresh process: its peak resident memory may rise by the output, the file itself
    (safetensors maps it; its pages count as resident while it is open) and a few MB. Dequantizing
    through float32 temporaries fragmented the heap and rose by up to 835 MB for this file."""
    gen = torch.Generator().manual_seed(0)
    tensors = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    for i in range(32):
        tensors[f"blocks.{i}.attn.weight"] = torch.randn(2048, 2048, generator=gen).to(torch.float8_e4m3fn)
        tensors[f"blocks.{i}.attn.scale_weight"] = torch.tensor(0.01)
    path = tmp_path / "model-fp8-scaled.safetensors"
    save_file(tensors, str(path))
    del tensors
    file_mb = path.stat().st_size / 2 ** 20
    done = subprocess.run([sys.executable, "-c", _READ_PEAK, str(path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    peak, kept, out = (float(x) for x in done.stdout.split())
    assert out == 256
    assert peak <= out + file_mb + 48, (peak, out, file_mb)
    assert kept <= out + 48, (kept, out)  # the file is closed and nothing but the weights is kept


def test_a_block_scaled_layer_is_refused_with_its_name():
    tensors = {"blocks.0.attn.weight": torch.zeros(4, 4, dtype=torch.uint8),
               "blocks.0.attn.weight_scale": torch.ones(4, 1),
               "blocks.0.attn.comfy_quant": torch.tensor(list(json.dumps({"format": "nvfp4"}).encode()),
                                                         dtype=torch.uint8)}
    with pytest.raises(ValueError, match=r"'model.safetensors': layer 'blocks.0.attn' is stored as nvfp4 with block "
                                         r"scales, which Persona cannot train from"):
        dequantize(tensors, "model.safetensors")



@pytest.fixture(scope="session")
def fp8_sd15_run(sd15_single_file, face_dataset):
    """The SD1.5-shaped checkpoint with its UNet in ComfyUI's scaled fp8 layout, and a 2-step
    LoRA training from that file (once per code version, shared by both hosts' checks): the
    file, the run's folder, and what the run recorded (the file's digest before training, the
    steps done and the losses)."""
    import hashlib
    import os

    from built import built_once
    from comfyui_persona.trainers.config import TrainConfig
    from comfyui_persona.trainers.loop import train

    def build(folder):
        fp8 = folder / "persona-sd15-fp8-scaled.safetensors"
        save_file(in_layout(load_file(str(sd15_single_file)), "fp8_scaled", "model.diffusion_model."), str(fp8))
        before = hashlib.sha256(fp8.read_bytes()).hexdigest()
        cache = os.environ.get("PERSONA_CACHE")
        os.environ["PERSONA_CACHE"] = str(folder / "cache")  # where the dequantized copy goes
        try:
            result = train(TrainConfig(base_model=str(fp8), dataset=str(face_dataset), output_dir=str(folder / "run"),
                                       resolution=64, steps=2, rank=4, alpha=4, learning_rate=5e-2,
                                       checkpoint_every=0, memory="manual"))
        finally:
            if cache is None:
                os.environ.pop("PERSONA_CACHE")
            else:
                os.environ["PERSONA_CACHE"] = cache
        (folder / "run.json").write_text(json.dumps({"sha256_before": before, "steps_done": result.steps_done,
                                                     "losses": [r["loss"] for r in result.records]}))

    folder = built_once("sd15-fp8-run", build, large=True)
    return folder / "persona-sd15-fp8-scaled.safetensors", folder, json.loads((folder / "run.json").read_text())


def test_an_fp8_scaled_sd15_checkpoint_is_read_dequantized_and_trains_without_changing_the_file(
        fp8_sd15_run, sd15_single_file, tmp_path, monkeypatch):
    """The UNet of the checkpoint in ComfyUI's scaled fp8 layout: Persona reads it dequantized
    (a copy in its cache; the user's file untouched) and trains from it."""
    import hashlib

    from comfyui_persona.models.loading import load_components

    from built import large_memory

    fp8, folder, run = fp8_sd15_run
    monkeypatch.setenv("PERSONA_CACHE", str(tmp_path / "cache"))
    with large_memory():  # two published-size UNets in this process
        reference = load_components("sd15", sd15_single_file).denoiser.state_dict()
        read = load_components("sd15", fp8).denoiser.state_dict()
        assert read.keys() == reference.keys()
        quantized = [k for k, v in reference.items() if v.ndim >= 2]
        for key in quantized:  # within e4m3's rounding of each tensor's scaled range
            err = (read[key].float() - reference[key].float()).abs().max().item()
            assert err <= reference[key].float().abs().max().item() * 2 ** -4 + 1e-6, (key, err)
        del reference, read
        gc.collect()
    assert list((tmp_path / "cache" / "dequantized").glob("*.safetensors"))
    assert list((folder / "cache" / "dequantized").glob("*.safetensors"))  # the training read such a copy too
    assert run["steps_done"] == 2 and all(math.isfinite(loss) for loss in run["losses"])
    assert hashlib.sha256(fp8.read_bytes()).hexdigest() == run["sha256_before"]  # the source is never modified


@pytest.mark.server
def test_comfyui_applies_the_lora_trained_from_an_fp8_checkpoint_to_that_checkpoint(comfy, fp8_sd15_run):
    """ComfyUI's CheckpointLoader loads the same fp8 file Persona trained from and applies the
    LoRA with every key."""
    fp8, folder, _run = fp8_sd15_run
    target = comfy.models / "checkpoints" / fp8.name
    if not target.exists():
        target.symlink_to(fp8)
    shutil.copy(folder / "run" / "lora.safetensors", comfy.models / "loras" / "persona_from_fp8.safetensors")
    graph = lora_graph("unused", "persona_from_fp8.safetensors", 1.0, "from_fp8")
    graph["1"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": fp8.name}}
    log_before = len(comfy.log())
    entry = comfy.run_prompt(graph)
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert re.findall(r"lora key not loaded.*", comfy.log()[log_before:]) == []


@pytest.mark.server
def test_an_fp8_sdxl_checkpoint_trains_and_comfyui_maps_every_lora_key(comfy, tiny_sdxl, face_dataset, tmp_path,
                                                                         monkeypatch):
    """An SDXL checkpoint as ComfyUI users keep one (UNet in fp8 e4m3fn, both text encoders
    and the VAE in one original-layout file): read back within fp8's rounding (the text
    encoders and VAE exactly, SDXL's OpenCLIP layout included), trained with the text encoders,
    the file untouched, and every key of the LoRA mapped by ComfyUI's own SDXL model and loader
    built from that same file."""
    from comfy_lora_checks import COMFY_SDXL_CHECK, assert_every_key_maps
    from comfyui_persona.models.loading import load_components
    from comfyui_persona.trainers.loop import train
    from trainer_helpers import tiny_config

    monkeypatch.setenv("PERSONA_CACHE", str(tmp_path / "cache"))
    path, modules = write_sdxl_checkpoint(tiny_sdxl, tmp_path / "files", tmp_path / "cache", "fp8_e4m3fn")
    before = path.read_bytes()
    comps = load_components("sdxl", path)
    rel, absolute = TOLERANCE["fp8_e4m3fn"]
    for name, module in modules.items():
        read = getattr(comps, name).state_dict()
        for key, value in module.state_dict().items():
            if name == "denoiser" and value.ndim >= 2 and key.endswith(".weight"):
                assert (read[key].float() - value).abs().le(rel * value.abs() + absolute + 1e-12).all(), key
            else:
                assert torch.equal(read[key], value), (name, key)
    cfg = tiny_config(path, face_dataset, tmp_path / "run", family="sdxl", steps=2, train_text_encoder=True)
    result = train(cfg)
    assert result.steps_done == 2 and all(math.isfinite(r["loss"]) for r in result.records)
    assert path.read_bytes() == before  # the source file is never modified
    te_keys = [f"te{i}:" + (k if k.startswith(("text_model.", "text_projection")) else f"text_model.{k}")
               for i, name in ((1, "text_encoder"), (2, "text_encoder_2")) for k in modules[name].state_dict()]
    assert_every_key_maps(comfy, COMFY_SDXL_CHECK, path, result.lora_path, te_keys)


def test_flux_trains_from_an_fp8_transformer_and_t5_and_comfyui_maps_every_lora_key(
        tiny_flux, face_dataset, comfy, tmp_path, monkeypatch):
    """FLUX.1 as ComfyUI users keep it in fp8: the transformer in the scaled layout, T5 in plain
    e4m3fn, CLIP-L and the VAE in their own files; read back within fp8's rounding, trained, and
    the exported LoRA mapped key for key by ComfyUI's own FLUX model and loader."""
    from diffusers import FluxTransformer2DModel

    from comfy_lora_checks import COMFY_FLUX_CHECK, assert_every_key_maps
    from comfyui_persona.models.loading import load_components
    from comfyui_persona.trainers.loop import train
    from trainer_helpers import tiny_config

    if not (comfy.root / "comfy" / "ldm" / "flux").is_dir():
        pytest.skip(f"{comfy.host}: this ComfyUI predates FLUX")
    monkeypatch.setenv("PERSONA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PERSONA_T5_TOKENIZER", str(tiny_flux / "tokenizer_2"))
    use_tiny_flux_configs(tiny_flux, tmp_path / "cache")
    files = write_flux_files(tiny_flux, tmp_path / "files", transformer="fp8_scaled", t5="fp8_e4m3fn")
    comps = load_components("flux", files["base_model"], clip_l=files["clip_l"], t5=files["t5"], vae=files["vae"])
    ref = FluxTransformer2DModel.from_pretrained(tiny_flux / "transformer").state_dict()
    own = comps.denoiser.state_dict()
    for key, value in ref.items():
        if value.ndim >= 2 and key.endswith(".weight"):
            assert (own[key].float() - value).abs().max() <= value.abs().max() * 2 ** -4 + 1e-6, key
    cfg = tiny_config(files["base_model"], face_dataset, tmp_path / "run", family="flux", steps=2,
                      clip_l=str(files["clip_l"]), t5=str(files["t5"]), vae=str(files["vae"]),
                      mixed_precision="bf16", validation_identity="off")
    result = train(cfg)
    assert result.steps_done == 2 and all(math.isfinite(r["loss"]) for r in result.records)
    shape = {"num_heads": comps.denoiser.config.num_attention_heads, "axes_dim": list(comps.denoiser.config.axes_dims_rope)}
    assert_every_key_maps(comfy, COMFY_FLUX_CHECK, files["base_model"], result.lora_path, shape)


def test_a_plain_file_is_loaded_as_it_is(sd15_single_file):
    assert not needs_dequantizing(sd15_single_file) and loadable_file(sd15_single_file) == sd15_single_file
