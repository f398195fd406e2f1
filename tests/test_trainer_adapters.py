"""Adapter variants: LoRA+ (the B matrices learn faster) and DoRA (a trained magnitude per
output row), down to the weight ComfyUI computes from the exported file."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfyui_persona.trainers.config import TrainConfig
from comfyui_persona.trainers.loop import Callbacks, train

from trainer_helpers import tiny_config

LR = 1e-3


def _first_step(tiny_model, face_dataset, out, **fields):
    groups = {}
    result = train(tiny_config(tiny_model, face_dataset, out, steps=1, checkpoint_every=1, learning_rate=LR,
                               weight_decay=0.0, max_grad_norm=0.0, **fields),
                   Callbacks(on_start=lambda info: groups.update(optimizer=info["optimizer"])))
    trained = load_file(str(result.run_dir / "checkpoints" / "step-000001" / "trainable.safetensors"))
    return trained, groups["optimizer"]


@pytest.mark.parametrize("ratio", [1.0, 16.0])
def test_loraplus_moves_the_up_matrices_ratio_times_faster(tiny_model, face_dataset, tmp_path, ratio):
    trained, optimizer = _first_step(tiny_model, face_dataset, tmp_path / "run", loraplus_lr_ratio=ratio)
    lrs = sorted(g["lr"] for g in optimizer.param_groups)
    assert lrs == ([LR] if ratio == 1.0 else [LR, LR * ratio])
    # B starts at zero and Adam's first step moves each element by lr * sign(grad)
    ups = torch.cat([v.flatten() for k, v in trained.items() if ".lora_B." in k])
    assert ups.abs().max().item() == pytest.approx(LR * ratio, rel=1e-3)


def test_adapter_variants_need_a_lora_and_dora_no_fp8_base(tiny_model, face_dataset, tmp_path):
    base = dict(base_model=str(tiny_model), dataset=str(face_dataset), output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="use_dora/loraplus_lr_ratio"):
        TrainConfig(**base, method="dreambooth", use_dora=True)
    with pytest.raises(ValueError, match="use_dora.*fp8"):
        TrainConfig(**base, use_dora=True, quantize_base="fp8")
    with pytest.raises(ValueError, match="use_dora.*flux"):
        TrainConfig(**base, family="flux", resolution=64, use_dora=True)
    with pytest.raises(ValueError, match="loraplus_lr_ratio"):
        TrainConfig(**base, loraplus_lr_ratio=0.5)


COMFY_WEIGHT = r"""
import json, sys
sys.argv = [sys.argv[0], "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
import torch, comfy.lora
from safetensors.torch import load_file, save_file
args = json.loads(sys.stdin.read())
lora = load_file(args["lora"])
weights = load_file(args["weights"])
out = {}
for key, name in args["keys"].items():
    patches = comfy.lora.load_lora(lora, {name: key})
    patch = (1.0, patches[key], 1.0, None, None)
    out[key] = comfy.lora.calculate_weight([patch], weights[key].clone(), key)
save_file(out, args["out"])
"""


def test_dora_trains_a_magnitude_and_comfyui_computes_peft_weights_from_the_file(tiny_model, face_dataset,
                                                                                  tmp_path):
    """The file's dora_scale makes ComfyUI's own weight_decompose give what peft's DoRA layer
    computes: m / ||W + dW|| * (W + dW)."""
    from comfy_server import NEWEST, HostUnavailable, host_env, host_source
    from comfyui_persona.models.loading import load_components

    cfg = tiny_config(tiny_model, face_dataset, tmp_path / "dora", steps=3, use_dora=True, learning_rate=5e-2)
    result = train(cfg)
    peft_file = load_file(str(result.diffusers_lora_dir / "pytorch_lora_weights.safetensors"))
    kohya = load_file(str(result.lora_path))
    modules = sorted({k.split(".lora_magnitude_vector")[0].removeprefix("unet.") for k in peft_file
                      if "lora_magnitude_vector" in k})
    assert modules and len([k for k in kohya if k.endswith(".dora_scale")]) == len(modules)
    unet = load_components("sd15", tiny_model).denoiser.state_dict()
    expected, base, keys = {}, {}, {}
    scale = cfg.alpha / cfg.rank
    for m in modules:
        w = unet[f"{m}.weight"].float()
        a, b = peft_file[f"unet.{m}.lora_A.weight"].float(), peft_file[f"unet.{m}.lora_B.weight"].float()
        magnitude = peft_file[f"unet.{m}.lora_magnitude_vector"].float()
        adapted = w + scale * b @ a
        expected[m] = (magnitude / adapted.norm(dim=1))[:, None] * adapted
        base[m] = w
        keys[m] = "lora_unet_" + m.replace(".", "_")
    moved = [m for m in modules if not torch.allclose(peft_file[f"unet.{m}.lora_magnitude_vector"].float(),
                                                      unet[f"{m}.weight"].float().norm(dim=1), rtol=1e-4)]
    assert moved, "the magnitudes did not train"
    try:
        source = host_source(NEWEST)
    except HostUnavailable as exc:
        pytest.skip(f"{NEWEST}: {exc}")
    save_file(base, str(tmp_path / "base.safetensors"))
    args = {"lora": str(result.lora_path), "weights": str(tmp_path / "base.safetensors"), "keys": keys,
            "out": str(tmp_path / "comfy.safetensors")}
    done = subprocess.run([sys.executable, "-c", COMFY_WEIGHT], input=json.dumps(args), cwd=source,
                          capture_output=True, text=True, timeout=300, env=host_env(NEWEST))
    assert done.returncode == 0, done.stderr[-3000:]
    comfy = load_file(str(tmp_path / "comfy.safetensors"))
    for m in modules:  # the file stores fp16 factors
        assert torch.allclose(comfy[m], expected[m], rtol=2e-3, atol=2e-4), m
        assert not torch.allclose(comfy[m], base[m], atol=1e-4), m
