"""Each memory technique does what it claims, and none changes the loss beyond tolerance."""
from __future__ import annotations

import pytest
import torch

from comfyui_persona.core.deps import MissingDependencyError
from comfyui_persona.trainers.memory import techniques as memory
from comfyui_persona.trainers.loop import Callbacks, train
from comfyui_persona.models.loading import load_components

from trainer_helpers import tiny_config


def _losses(result):
    return [r["loss"] for r in result.records]


@pytest.fixture(scope="module")
def baseline(tiny_model, face_dataset, tmp_path_factory):
    return _losses(train(tiny_config(tiny_model, face_dataset, tmp_path_factory.mktemp("base") / "run")))


def _saved_activation_bytes(unet, checkpointing: bool) -> int:
    memory.set_gradient_checkpointing(unet, checkpointing)
    unet.train()
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    x = torch.randn(1, 4, 8, 8)
    enc = torch.randn(1, 77, 32)
    lora_like = [p for p in unet.parameters()][:1]
    for p in lora_like:
        p.requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        unet(x, torch.tensor([10]), enc).sample.sum().backward()
    return sum(saved)


def test_gradient_checkpointing_saves_fewer_activations(tiny_model):
    unet = load_components("sd15", tiny_model).denoiser
    memory.freeze(unet)
    full = _saved_activation_bytes(unet, False)
    checkpointed = _saved_activation_bytes(unet, True)
    assert checkpointed < 0.7 * full, (checkpointed, full)


@pytest.mark.parametrize("fields", [
    {"gradient_checkpointing": True},
    {"attention": "sliced"},
    {"cache_latents": "off"},
    {"cache_latents": "disk"},
    {"cache_text_embeddings": False},
    {"vae_slicing": False, "vae_tiling": True},
    {"grad_set_to_none": False},
    {"fused_optimizer": True},
    {"channels_last": True},
    {"compile": "blocks", "cuda_graphs": True},  # no CUDA here: eager, with a log line
], ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()))
def test_switch_keeps_the_loss(tiny_model, face_dataset, tmp_path, baseline, fields):
    result = train(tiny_config(tiny_model, face_dataset, tmp_path / "run", **fields))
    assert _losses(result) == pytest.approx(baseline, rel=2e-3, abs=1e-4)
    if fields.get("cache_latents") == "disk":
        assert (tmp_path / "run" / "cache" / "latents.safetensors").is_file()


def _count_calls(module_name: str, **fields):
    """Forward calls of the text encoder / VAE encoder during the training steps."""
    calls = {"n": 0}

    def on_start(info):
        target = info["text_encoder"] if module_name == "text_encoder" else info["vae"].encoder
        target.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))

    return calls, Callbacks(on_start=on_start)


def test_caches_keep_the_encoders_out_of_the_loop(tiny_model, face_dataset, tmp_path):
    for module, switch in (("text_encoder", "cache_text_embeddings"), ("vae", "cache_latents")):
        on = {switch: True if switch == "cache_text_embeddings" else "memory"}
        off = {switch: False if switch == "cache_text_embeddings" else "off"}
        calls, cb = _count_calls(module)
        train(tiny_config(tiny_model, face_dataset, tmp_path / f"{module}-on", **on), cb)
        assert calls["n"] == 0, module
        calls, cb = _count_calls(module)
        train(tiny_config(tiny_model, face_dataset, tmp_path / f"{module}-off", **off), cb)
        assert calls["n"] == 3, module  # once per step


def test_set_to_none_frees_gradients(tiny_model, face_dataset, tmp_path):
    seen = {}

    def on_start(info):
        seen["params"] = [p for p in info["denoiser"].parameters() if p.requires_grad]

    def on_log(_record):
        seen.setdefault("grads", []).append([p.grad for p in seen["params"]])

    for flag in (True, False):
        seen.clear()
        train(tiny_config(tiny_model, face_dataset, tmp_path / f"run{flag}", grad_set_to_none=flag),
              Callbacks(on_start=on_start, on_log=on_log))
        grads = seen["grads"][-1]
        if flag:
            assert all(g is None for g in grads)
        else:
            assert all(g is not None and not g.any() for g in grads)


def test_gradient_accumulation_makes_one_step_of_several_micro_batches(tiny_model, face_dataset, tmp_path):
    steps = {}

    def on_start(info):
        opt = info["optimizer"]
        original = opt.step
        steps["n"] = 0

        def counted(*a, **k):
            steps["n"] += 1
            return original(*a, **k)

        opt.step = counted

    result = train(tiny_config(tiny_model, face_dataset, tmp_path / "run", gradient_accumulation=3),
                   Callbacks(on_start=on_start))
    assert steps["n"] == 3 and len(result.records) == 3
    assert all(r["samples_per_s"] > 0 for r in result.records)


def test_bf16_keeps_trainable_weights_in_fp32(tiny_model, face_dataset, tmp_path, baseline):
    dtypes = {}

    def on_start(info):
        unet = info["denoiser"]
        dtypes["trainable"] = {p.dtype for p in unet.parameters() if p.requires_grad}
        dtypes["frozen"] = {p.dtype for p in unet.parameters() if not p.requires_grad}

    result = train(tiny_config(tiny_model, face_dataset, tmp_path / "run", mixed_precision="bf16"),
                   Callbacks(on_start=on_start))
    assert dtypes == {"trainable": {torch.float32}, "frozen": {torch.bfloat16}}
    assert _losses(result) == pytest.approx(baseline, rel=0.05)


def test_fp16_on_cpu_is_refused_with_the_field_named(tiny_model, face_dataset, tmp_path):
    from comfyui_persona.core.config import ConfigError

    with pytest.raises(ConfigError, match="mixed_precision"):
        train(tiny_config(tiny_model, face_dataset, tmp_path / "run", mixed_precision="fp16", device="cpu"))


def test_optimizers(tiny_model, face_dataset, tmp_path):
    result = train(tiny_config(tiny_model, face_dataset, tmp_path / "ada", optimizer="adafactor", steps=2))
    assert len(result.records) == 2 and result.lora_path.is_file()
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        with pytest.raises(MissingDependencyError, match="bitsandbytes"):
            train(tiny_config(tiny_model, face_dataset, tmp_path / "bnb", optimizer="adamw8bit", steps=2))


def test_vae_slicing_and_tiling_switches(tiny_model):
    vae = load_components("sd15", tiny_model).vae
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    memory.configure_vae(vae, slicing=False, tiling=False)
    with torch.no_grad():
        whole = vae.encode(x).latent_dist.mean
    memory.configure_vae(vae, slicing=True, tiling=False)
    assert vae.use_slicing and not vae.use_tiling
    with torch.no_grad():
        sliced = vae.encode(x).latent_dist.mean
    assert torch.allclose(whole, sliced, atol=1e-5)
    memory.configure_vae(vae, slicing=False, tiling=True)
    assert vae.use_tiling and not vae.use_slicing


def test_speed_switches_fall_back_with_a_log_line_where_unsupported(tiny_model, face_dataset, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO):
        train(tiny_config(tiny_model, face_dataset, tmp_path / "run", steps=1, compile="blocks", cuda_graphs=True))
    text = caplog.text
    assert "compile: compile needs a CUDA device (this run is on cpu); the blocks run eagerly (and without CUDA " \
           "graphs)" in text


def test_the_loss_is_read_only_on_logged_steps(tiny_model, face_dataset, tmp_path):
    """log_every 3 over 7 steps: lines for steps 1, 3, 6 and 7, each with the mean step time
    since the line before, samples/s and the step's FLOPs over that time."""
    import json

    result = train(tiny_config(tiny_model, face_dataset, tmp_path / "run", steps=7, log_every=3))
    assert [r["step"] for r in result.records] == [1, 3, 6, 7]
    lines = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines() if '"loss"' in l]
    assert [l["step"] for l in lines] == [1, 3, 6, 7]
    for line in lines:
        assert line["step_seconds"] > 0 and line["tflops"] > 0 and line["mfu"] is None  # a CPU has no named peak


@pytest.mark.parametrize("family", ["sd15", "sdxl", "flux", "z_image", "flux2", "flux2_dev", "qwen_image"])
def test_an_fp8_base_never_computes_with_an_input_rounded_to_fp8(family):
    """Some model code casts a layer's input to the layer's own weight dtype (diffusers' Z-Image
    timestep embedder: the sinusoids to ``mlp[0].weight.dtype``); on an fp8 base that rounds the
    input to 3 mantissa bits (on a CPU silently; CUDA has no float8 multiply and fails). An fp8
    layer refuses such an input, and each family keeps those layers out of fp8 (its
    ``quantize_skip``): one step of every family's test-size denoiser on an fp8 base runs, and
    the skipped layers stay in full precision."""
    from comfyui_persona.models.architectures import instantiate
    from comfyui_persona.models.families import get_family
    from comfyui_persona.trainers.config import TrainConfig
    from comfyui_persona.trainers.memory.quantize import Fp8Linear
    from comfyui_persona.trainers.memory.simulate import run_steps

    comps = instantiate(family, "tiny", tokenizers=False, text_encoders=False)
    cfg = TrainConfig(base_model="(test)", dataset="(test)", family=family, resolution=64, mixed_precision="bf16",
                      quantize_base="fp8", rank=4, alpha=4)
    out = run_steps(comps, cfg, "cpu", steps=1, warmup=0)
    assert out["loss"] is not None and torch.isfinite(torch.tensor(out["loss"]))
    layers = dict(comps.denoiser.named_modules())
    assert any(isinstance(m, Fp8Linear) for m in layers.values())
    for part in get_family(family).quantize_skip:
        kept = [n for n, m in layers.items() if part in n and isinstance(m, torch.nn.Linear)]
        assert kept and not any(isinstance(layers[n], Fp8Linear) for n in kept), (part, kept)


def test_an_fp8_layer_refuses_an_input_in_fp8():
    from comfyui_persona.trainers.memory.quantize import Fp8Linear

    layer = Fp8Linear(torch.nn.Linear(8, 4))
    assert layer(torch.randn(2, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16
    with pytest.raises(TypeError, match="float8_e4m3fn.*quantize_skip"):
        layer(torch.randn(2, 8).to(torch.float8_e4m3fn))
