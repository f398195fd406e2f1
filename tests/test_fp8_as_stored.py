"""An fp8 transformer file read as stored (models/file_weights.py, models/fp8_linear.py): a run
that quantizes its base to fp8 anyway builds Persona's fp8 layer from the file's own fp8 values
and scales, through each family's layout conversion, instead of reading them as bf16 and
quantizing that again. The values are the file's exactly, the layers a family keeps out of fp8
are read as bf16, and a conversion that is not row by row falls back to the bf16 reading."""
from __future__ import annotations

import logging
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from comfy_files import in_layout
from comfyui_persona.models.file_weights import convert_keeping_fp8, dequantize_kept, read_weights
from comfyui_persona.models.fp8_linear import Fp8Linear


def _qwen_image():
    from diffusers import QwenImageTransformer2DModel

    from comfyui_persona.models.families.qwen_image.files import load_transformer_file

    return "tiny_qwen_image", QwenImageTransformer2DModel, lambda sd, cfg: sd, load_transformer_file


def _flux2():
    from diffusers import Flux2Transformer2DModel

    from comfyui_persona.models.families.flux2.files import load_transformer_file
    from comfyui_persona.models.families.flux2.keys import diffusers_to_bfl

    return "tiny_flux2", Flux2Transformer2DModel, diffusers_to_bfl, load_transformer_file


def _flux():
    from diffusers import FluxTransformer2DModel

    from comfyui_persona.models.families.flux.files import load_transformer_file
    from comfyui_persona.models.families.flux.keys import diffusers_to_bfl

    return "tiny_flux", FluxTransformer2DModel, diffusers_to_bfl, load_transformer_file


def _z_image():
    from diffusers import ZImageTransformer2DModel

    from comfyui_persona.models.families.z_image.files import load_transformer_file
    from comfyui_persona.models.families.z_image.keys import diffusers_to_original

    return "tiny_z_image", ZImageTransformer2DModel, lambda sd, cfg: diffusers_to_original(sd), load_transformer_file


FAMILIES = {"qwen_image": _qwen_image, "flux2": _flux2, "flux": _flux, "z_image": _z_image}


@pytest.mark.parametrize("family, layout", [("qwen_image", "fp8_scaled"), ("qwen_image", "fp8_e4m3fn"),
                                            ("flux2", "fp8_weight_scale"), ("flux", "fp8_scaled"),
                                            ("z_image", "fp8_scaled")])
def test_an_fp8_files_weights_are_read_as_stored_into_the_fp8_layer(request, tmp_path, family, layout):
    """The tiny transformer in the file layout ComfyUI users have (diffusers' names for
    Qwen-Image, BFL's fused attention for FLUX.1 and FLUX.2, the original fused layout for
    Z-Image), its matrices in fp8: read as stored, every linear layer of an fp8 weight is
    Persona's fp8 layer, whose values are exactly what the bf16 reading of the same file gives
    before its rounding to bf16 (so the conversion moved each scale with its rows); the layers
    the family keeps out of fp8 (Z-Image's timestep embedder) and every other tensor are read as
    the bf16 reading reads them. Where nothing is converted the layer holds the file's bytes and
    scale themselves."""
    from comfyui_persona.models.families import get_family

    fixture, cls, to_file, load = FAMILIES[family]()
    tiny = request.getfixturevalue(fixture)
    ref = cls.from_pretrained(tiny / "transformer")
    path = tmp_path / f"{family}_{layout}.safetensors"
    save_file(in_layout({f"model.diffusion_model.{k}": v.contiguous() for k, v in to_file(ref.state_dict(),
                                                                                         dict(ref.config)).items()},
                        layout, "model.diffusion_model."), str(path))
    skip = get_family(family).quantize_skip
    as_bf16 = load(path, tiny / "transformer")
    stored = load(path, tiny / "transformer", keep_fp8=skip)
    bf16_weights = as_bf16.state_dict()
    fp8_layers = {n: m for n, m in stored.named_modules() if isinstance(m, Fp8Linear)}
    linears = {n for n, m in as_bf16.named_modules() if type(m) is torch.nn.Linear}
    assert set(fp8_layers) == {n for n in linears if not any(s in n for s in skip)}
    for name, layer in fp8_layers.items():
        assert layer.weight.dtype == torch.float8_e4m3fn and layer.scale.shape == (layer.out_features, 1)
        assert torch.equal(layer.dequantized().to(torch.bfloat16), bf16_weights[f"{name}.weight"]), name
    own = stored.state_dict()
    rest = [k for k in bf16_weights if k.removesuffix(".weight") not in fp8_layers]
    assert rest and all(torch.equal(own[k], bf16_weights[k]) for k in rest)
    if skip:
        assert any(any(s in k for s in skip) for k in rest)  # kept out of fp8, read as bf16
    if family == "qwen_image":  # nothing converted: the file's own bytes and scales
        with safe_open(str(path), "pt") as f:
            for name, layer in fp8_layers.items():
                key = f"model.diffusion_model.{name}"
                assert torch.equal(layer.weight.view(torch.uint8), f.get_tensor(f"{key}.weight").view(torch.uint8))
                scale = f.get_tensor(f"{key}.scale_weight").item() if layout == "fp8_scaled" else 1.0
                assert torch.all(layer.scale == scale), name


def test_a_conversion_that_is_not_row_by_row_reads_the_weights_as_bf16(tmp_path):
    """A converter that transposes a weight, or casts it (which would drop its scale), is run on
    the bf16 reading instead: what comes out is exactly what the bf16 reading converts to, no
    fp8 left. A row-wise one (a split) keeps the scales with their rows."""
    w = torch.randn(6, 4) * 3
    path = tmp_path / "t.safetensors"
    save_file(in_layout({"a.weight": w, "a.bias": torch.randn(6)}, "fp8_scaled"), str(path))
    kept, plain = read_weights(path, keep_fp8=True), read_weights(path)
    assert kept["a.weight"].dtype == torch.float8_e4m3fn and kept["a.scale"].shape == (6, 1)
    assert dequantize_kept(kept).keys() == plain.keys()
    assert all(torch.equal(dequantize_kept(kept)[k], v) for k, v in plain.items())
    for convert in (lambda t: {k: v.t() if v.ndim == 2 else v for k, v in t.items()},
                    lambda t: {k: v.float() for k, v in t.items()}):
        out = convert_keeping_fp8(convert, kept)
        expected = convert(plain)
        assert out.keys() == expected.keys() and all(torch.equal(out[k], v) for k, v in expected.items())
    split = convert_keeping_fp8(lambda t: {"q.weight": t["a.weight"][:2], "k.weight": t["a.weight"][2:],
                                           "a.bias": t["a.bias"]}, kept)
    assert split["q.scale"].shape == (2, 1) and split["k.scale"].shape == (4, 1)
    assert torch.equal((split["k.weight"].float() * split["k.scale"]).to(torch.bfloat16), plain["a.weight"][2:])


def test_a_run_that_quantizes_to_fp8_trains_on_the_files_own_fp8_values(tiny_flux2, face_dataset, tmp_path,
                                                                         monkeypatch, caplog):
    """FLUX.2 klein from ComfyUI's files, the transformer in fp8 in BFL's layout: a run with
    ``quantize_base: fp8`` trains on frozen layers holding the file's values (their bf16
    rounding is the bf16 reading's weight, bit for bit; quantizing the bf16 reading again, as
    before, gives other values), and says so; a run that does not quantize reads bf16."""
    import shutil

    from test_flux2 import write_flux2_files

    from comfyui_persona.models.families.flux2.files import load_transformer_file
    from comfyui_persona.trainers.loop import Callbacks, train
    from trainer_helpers import tiny_config

    monkeypatch.setenv("PERSONA_CACHE", str(tmp_path / "cache"))
    files, _ = write_flux2_files(tiny_flux2, tmp_path / "files", fp8=True)
    configs = tmp_path / "cache" / "configs" / "flux2"  # the test model's shapes, not the published ones
    shutil.copytree(tiny_flux2, configs, ignore=shutil.ignore_patterns("*.safetensors"))
    (configs / ".complete").write_text("flux2")
    as_bf16 = load_transformer_file(files["base_model"], configs / "transformer").state_dict()

    def run(name, **fields):
        events = {}
        cfg = tiny_config(files["base_model"], face_dataset, tmp_path / name, family="flux2", steps=2,
                          llm_max_length=32, llm=str(files["llm"]), vae=str(files["vae"]), **fields)
        return train(cfg, Callbacks(on_start=lambda info: events.update(info))), events

    with caplog.at_level(logging.INFO):
        result, events = run("fp8", quantize_base="fp8", mixed_precision="bf16")
    assert result.steps_done == 2 and all(math.isfinite(r["loss"]) for r in result.records)
    bases = {n.removesuffix(".base_layer"): m for n, m in events["denoiser"].named_modules()
             if n.endswith("base_layer")}
    assert bases and all(isinstance(b, Fp8Linear) for b in bases.values())
    requantized = 0
    for name, layer in bases.items():
        assert torch.equal(layer.dequantized().to(torch.bfloat16), as_bf16[f"{name}.weight"]), name
        source = torch.nn.Linear(layer.in_features, layer.out_features, bias=False)
        source.weight.data = as_bf16[f"{name}.weight"].float()
        again = Fp8Linear(source)
        requantized += not torch.equal(again.dequantized().to(torch.bfloat16), as_bf16[f"{name}.weight"])
    assert requantized  # what reading bf16 and quantizing that would have trained on instead
    assert any("read as stored" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        plain, events = run("bf16")
    assert plain.steps_done == 2 and not any("read as stored" in r.getMessage() for r in caplog.records)
    assert not any(isinstance(m, Fp8Linear) for m in events["denoiser"].modules())


def _t5():
    from transformers import T5Config, T5EncoderModel

    from comfyui_persona.models.families.flux import Flux

    return "tiny_flux", "text_encoder_2", T5EncoderModel, T5Config, "", Flux.text_quantize_skip


def _qwen3():
    from transformers import Qwen3Config, Qwen3Model

    return "tiny_z_image", "text_encoder", Qwen3Model, Qwen3Config, "model.", ()


@pytest.mark.parametrize("encoder", ["t5", "qwen3"])
@pytest.mark.parametrize("layout", ["fp8_e4m3fn", "fp8_scaled"])
def test_a_text_encoders_fp8_file_is_read_as_stored(request, tmp_path, encoder, layout):
    """A text encoder's file in ComfyUI's fp8 layouts (T5 as FLUX.1's ``t5xxl_fp8_e4m3fn``, Qwen3
    as a causal LM's file under ``model.``): every linear layer of an fp8 weight is Persona's fp8
    layer holding the file's values and scales, but those the family reads as bf16 (T5's
    feed-forward output, whose input transformers casts to its weight's dtype) and the embedding
    tables (no linear layer), which are exactly the bf16 reading of the same file. Cast to fp32
    as a run on the CPU casts it, the encoder gives the bf16 reading's states bit for bit where
    the file has no scales (the same values reach the same kernels); a scaled file's layer keeps
    the product of value and scale in fp32 where the bf16 reading rounded it to bf16 (8
    significant bits), so there the states agree within that rounding."""
    from comfyui_persona.models.families.separate_files import load_text_model
    from comfyui_persona.trainers.memory.techniques import cast_frozen, freeze

    fixture, sub, cls, config_cls, prefix, skip = {"t5": _t5, "qwen3": _qwen3}[encoder]()
    config = request.getfixturevalue(fixture) / sub
    source = cls.from_pretrained(config)
    path, plain = tmp_path / f"{encoder}_{layout}.safetensors", tmp_path / f"{encoder}_bf16.safetensors"
    save_file(in_layout({f"{prefix}{k}": v.contiguous() for k, v in source.state_dict().items()}, layout), str(path))
    save_file(read_weights(path), str(plain))  # the file as the bf16 reading reads it
    stored = load_text_model(cls, config_cls, config, path, fp8_skip=skip)
    as_bf16 = load_text_model(cls, config_cls, config, plain, fp8_skip=skip)
    fp8_layers = {n: m for n, m in stored.named_modules() if isinstance(m, Fp8Linear)}
    linears = {n for n, m in as_bf16.named_modules() if type(m) is torch.nn.Linear}
    assert fp8_layers and set(fp8_layers) == {n for n in linears if not any(s in n for s in skip)}
    if skip:
        assert any(any(s in n for s in skip) for n in linears - set(fp8_layers))
    bf16_weights = as_bf16.state_dict()
    for name, layer in fp8_layers.items():
        assert layer.weight.dtype == torch.float8_e4m3fn and layer.scale.shape == (layer.out_features, 1)
        assert torch.equal(layer.dequantized().to(torch.bfloat16), bf16_weights[f"{name}.weight"]), name
    own = stored.state_dict()
    rest = [k for k in bf16_weights if k.removesuffix(".weight") not in fp8_layers]
    assert any("embed" in k or k.startswith("shared.") for k in rest)
    assert all(own[k].dtype == bf16_weights[k].dtype and torch.equal(own[k], bf16_weights[k]) for k in rest)
    ids = torch.randint(0, source.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    states = []
    for model in (stored, as_bf16):  # placed as a run on the CPU places its encoders
        freeze(model)
        cast_frozen(model, torch.float32)
        with torch.no_grad():
            states.append(model(input_ids=ids).last_hidden_state)
    if layout == "fp8_e4m3fn":
        assert torch.equal(states[0], states[1])
    else:
        assert not torch.equal(states[0], states[1])
        # a few layers of one bf16 rounding each (2^-9 relative): measured 0.2-0.3 % of the largest state
        assert (states[0] - states[1]).abs().max() <= 0.01 * states[1].abs().max()
