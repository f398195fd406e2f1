"""Plans that hold for the whole run (trainers/memory/caching.py, class_images.py,
planner.usable_budget): at the published sizes, on the meta device, every phase (prior
preservation's class images, caching the latents and captions, the training step) is predicted
within the budget less the headroom kept for the CUDA context and the allocator's reserve;
FLUX.1's T5-XXL, larger than an 8 GB card's usable memory, encodes on the CPU; a class-image
phase too large for the budget streams the fewest blocks that fit; and an encoder kept on the
CPU takes the run's inputs and gives its outputs back."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_persona.trainers.config import TrainConfig
from comfyui_persona.trainers.memory import planner
from comfyui_persona.trainers.memory.planner import plan, usable_budget


@pytest.fixture(scope="module")
def plan_cache(tmp_path_factory):
    """One cold plan cache for this module's published-size plans (the FLUX 8 GB plan is
    searched once for two tests)."""
    return tmp_path_factory.mktemp("plans")


def _cfg(family, resolution, **fields):
    return TrainConfig(**{"base_model": "(plan)", "dataset": "(plan)", "family": family, "resolution": resolution,
                          "mixed_precision": "bf16", "rank": 16, "alpha": 16, **fields})


def test_the_headroom_is_the_context_and_the_allocators_reserve():
    assert usable_budget(8192, cuda=True) == pytest.approx((8192 - planner.CONTEXT_MB) / (1 + planner.RESERVE_FRACTION))
    assert usable_budget(8192, cuda=True, context_mb=0) == pytest.approx(8192 / (1 + planner.RESERVE_FRACTION))
    assert usable_budget(8192, cuda=False) == 8192  # CPU targets: the live-tensor meter is exact
    # a "12 GB" plan predicted at 11.9 GB cannot run on a 12 GB card: at most ~10.6 GB is usable
    assert usable_budget(12 * 1024, cuda=True) < 10.7 * 1024


@pytest.mark.parametrize("family, size, resolution, budget_gb", [
    ("sd15", "real", 512, 4), ("sdxl", "real", 1024, 8), ("flux", "real", 1024, 8), ("z_image", "real", 1024, 6),
    ("flux2", "real", 1024, 6), ("flux2", "klein-9b", 1024, 8), ("qwen_image", "real", 1024, 10),
    ("flux2_dev", "real", 1024, 16)])
def test_no_phase_of_a_published_size_plan_exceeds_the_budget_less_headroom(plan_cache, monkeypatch, family, size,
                                                                            resolution, budget_gb):
    monkeypatch.setenv("PERSONA_CACHE", str(plan_cache))
    p = plan(_cfg(family, resolution), budget_gb * 1024, "cpu", None, size, bnb=True, compile_ok=True)
    usable = usable_budget(budget_gb * 1024, cuda=True)
    assert p.usable_mb == pytest.approx(usable, abs=0.1)
    assert p.predicted_peak_mb <= usable and p.caching["peak_mb"] <= usable
    assert p.whole_run_peak_mb == max(p.predicted_peak_mb, p.caching["peak_mb"])
    assert p.caching["vae_mb"] > 0  # the VAE encodes the dataset on the device
    text = p.describe()
    assert "whole run" in text and "usable" in text and "caching: the VAE" in text


def test_z_image_at_6_gb_reads_captions_with_qwen3_on_the_cpu(plan_cache, monkeypatch):
    """Z-Image LoRA @1024: Qwen3-4B's weights (7.5 GB in bf16) are more than 6 GB's usable
    part, so the captions are encoded with it on the CPU; the 6B transformer's step fits by
    streaming blocks of its fp8 base, and the whole run's peak is within the usable budget."""
    from comfyui_persona.trainers.memory.caching import encoder_memory

    monkeypatch.setenv("PERSONA_CACHE", str(plan_cache))
    p = plan(_cfg("z_image", 1024), 6 * 1024, "cpu", None, "real", bnb=True, compile_ok=True)
    qwen_weights, _ = encoder_memory("z_image", None, "real", 1024, "bfloat16",
                                     (("text_encoder", 512),))["text_encoder"]
    assert qwen_weights / 2 ** 20 > p.usable_mb
    assert p.switches["encode_on_cpu"] == ["text_encoder"]
    assert p.blocks == 34 and p.whole_run_peak_mb <= p.usable_mb
    # the search streamed both bases; an fp8 base streams fewer blocks, predicted faster here,
    # and no simulated candidate that fits is predicted faster than the plan
    streamed = {t["quantize_base"] for t in p.tried if t.get("stream_blocks")}
    assert streamed == {"off", "fp8"}, p.tried
    assert p.switches["quantize_base"] == "fp8" and 0 < p.switches["stream_blocks"] < p.blocks
    for t in p.tried:
        if t["predicted_peak_mb"] <= p.usable_mb:
            switches = {k: v for k, v in t.items() if k != "predicted_peak_mb"}
            assert planner.speed_of(switches, 1, p.blocks) <= p.relative_speed + 1e-9, (t, p.switches)


def test_flux_at_8_gb_fits_its_plan_through_caching(plan_cache, monkeypatch):
    """FLUX.1 LoRA @1024 with T5-XXL and CLIP-L: T5-XXL's weights alone (8.9 GB in bf16) are
    more than the usable part of 8 GB, so the plan encodes the captions with it on the CPU and
    with CLIP-L on the device; the caching phase then fits, and so does the step."""
    from comfyui_persona.trainers.memory.caching import encoder_memory

    monkeypatch.setenv("PERSONA_CACHE", str(plan_cache))
    p = plan(_cfg("flux", 1024), 8 * 1024, "cpu", None, "real", bnb=True, compile_ok=True)
    t5_weights, _ = encoder_memory("flux", None, "real", 1024, "bfloat16",
                                   (("text_encoder", 77), ("text_encoder_2", 512)))["text_encoder_2"]
    assert t5_weights / 2 ** 20 > p.usable_mb
    assert p.switches["encode_on_cpu"] == ["text_encoder_2"]
    assert 0 < p.caching["text_encoders_mb"] < 1024  # CLIP-L only
    assert p.whole_run_peak_mb <= p.usable_mb
    applied = p.apply(_cfg("flux", 1024))
    assert applied.encode_on_cpu == ["text_encoder_2"] and applied.memory == "manual"


def test_prior_preservations_class_images_are_a_planned_phase(plan_cache, monkeypatch):
    """SD1.5 @512 with prior preservation in 4 GB: the class images are sampled by the base at
    the compute precision (UNet, VAE and CLIP-L on the device, one guided prediction), within
    the usable budget, and the whole run's peak counts that phase."""
    from comfyui_persona.trainers.memory.class_images import class_images_bytes

    monkeypatch.setenv("PERSONA_CACHE", str(plan_cache))
    cfg = _cfg("sd15", 512, prior_preservation=True)
    p = plan(cfg, 4 * 1024, "cpu", None, "real", bnb=True, compile_ok=True)
    phase = p.class_images
    assert phase["fits"] and phase["text_on_cpu"] == [] and phase["quantize"] == "off"
    # the UNet alone is 1.6 GiB in bf16: the phase holds at least all the weights, cast
    assert 1.7 * 1024 < phase["peak_mb"] <= p.usable_mb
    assert p.whole_run_peak_mb == max(p.predicted_peak_mb, p.caching["peak_mb"], phase["peak_mb"])
    assert "class images:" in p.describe()
    # what the text encoder costs in the phase is what keeping it on the CPU saves
    applied = p.apply(cfg)
    on_device = class_images_bytes(applied, None, "real")
    on_cpu = class_images_bytes(applied, None, "real", ("text_encoder",))
    assert 100 * 2 ** 20 < on_device - on_cpu < 300 * 2 ** 20  # CLIP-L: 123M parameters in bf16


def test_a_class_image_phase_streams_the_fewest_blocks_that_fit():
    """SDXL @1024 in an 8 GB plan: with both text encoders on the CPU its class images still
    need more than the usable memory, so the phase streams blocks from CPU memory, the fewest
    that fit (one fewer does not); FLUX.1 in 2 GB does not fit even with every block streamed,
    and the phase says so with its leanest figure (the planner then refuses the run)."""
    from comfyui_persona.trainers.memory.class_images import class_images_bytes, plan_class_images
    from comfyui_persona.trainers.memory.planner import calibrate

    usable = usable_budget(8 * 1024, cuda=True)
    cfg = _cfg("sdxl", 1024, prior_preservation=True)
    phase = plan_class_images(cfg, None, "real", usable, lambda mb: calibrate(mb, True))
    assert phase["fits"] and sorted(phase["text_on_cpu"]) == ["text_encoder", "text_encoder_2"]
    n = phase["stream_blocks"]
    assert n >= 1 and phase["peak_mb"] <= usable
    one_fewer = calibrate(class_images_bytes(cfg, None, "real", tuple(phase["text_on_cpu"]), "off", n - 1) / 2 ** 20,
                          True)
    assert one_fewer > usable
    flux = plan_class_images(_cfg("flux", 1024, prior_preservation=True), None, "real", 2048,
                             lambda mb: calibrate(mb, True))
    assert not flux["fits"] and flux["stream_blocks"] == 57 and flux["peak_mb"] > 2048


def test_streamed_blocks_sample_the_same_class_images(tiny_model, tmp_path):
    """The class-image phase's streaming (the last blocks' weights fetched from CPU memory for
    each forward, as while training) draws the images the model draws in memory."""
    from comfyui_persona.models.families import get_family
    from comfyui_persona.models.loading import load_components
    from comfyui_persona.trainers.loop.prior import class_images
    from comfyui_persona.trainers.memory.blocks import stream_last

    comps = load_components("sd15", tiny_model)
    plain, _ = class_images(comps, "a photo of a person", 2, 64, 0, 3, tmp_path / "plain")
    blocks = get_family("sd15").repeated_blocks(comps.denoiser)
    streamer = stream_last(blocks, len(blocks) - 1, "cpu", comps.denoiser)
    try:
        streamed, made = class_images(comps, "a photo of a person", 2, 64, 0, 3, tmp_path / "streamed")
        assert made == 2 and streamer.fetches > 0
    finally:
        streamer.close()
    for a, b in zip(plain, streamed):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def test_class_images_are_sampled_by_the_base_as_training_quantizes_it(tiny_model, face_dataset, tmp_path):
    """With ``quantize_base: fp8`` the denoiser is quantized before it samples the class images
    (the phase then holds fp8 weights) and training uses it as it is; in bf16 the class images
    come from the base cast to bf16."""
    from comfyui_persona.trainers.loop import Callbacks, train
    from comfyui_persona.trainers.memory.quantize import Fp8Linear
    from trainer_helpers import tiny_config

    events = {}
    cfg = tiny_config(tiny_model, face_dataset, tmp_path / "run", steps=1, prior_preservation=True,
                      num_class_images=1, class_images_steps=1, quantize_base="fp8", mixed_precision="bf16",
                      cache_dir=str(tmp_path / "class_cache"))
    result = train(cfg, Callbacks(on_start=lambda info: events.update(info)))
    assert result.steps_done == 1 and result.class_images_generated == 1
    layers = [m.base_layer for m in events["denoiser"].modules() if hasattr(m, "base_layer")]
    assert layers and all(isinstance(b, Fp8Linear) for b in layers)


def test_a_denoiser_that_trains_whole_samples_its_class_images_without_rounding(tiny_model, face_dataset, tmp_path):
    """DreamBooth with prior preservation in bf16: the UNet's weights are what the run trains
    and exports, so the class images are sampled under autocast and the weights the first step
    starts from are the loaded fp32 ones, bit for bit."""
    from comfyui_persona.models.loading import load_components
    from comfyui_persona.trainers.loop import Callbacks, train
    from trainer_helpers import tiny_config

    original = load_components("sd15", tiny_model).denoiser.state_dict()
    start = {}

    def on_start(info):
        start.update({k: v.detach().clone() for k, v in info["denoiser"].state_dict().items()})

    cfg = tiny_config(tiny_model, face_dataset, tmp_path / "run", steps=1, method="dreambooth",
                      prior_preservation=True, num_class_images=1, class_images_steps=1, mixed_precision="bf16",
                      cache_dir=str(tmp_path / "class_cache"))
    result = train(cfg, Callbacks(on_start=on_start))
    assert result.class_images_generated == 1
    assert start.keys() == original.keys()
    assert all(start[k].dtype == torch.float32 and torch.equal(start[k], original[k]) for k in original)


def test_an_encoder_kept_on_the_cpu_returns_its_outputs_on_the_runs_device():
    """run_on_cpu's hooks: inputs to the CPU, outputs (a tuple, a dict) back to the run's device
    (here the meta device, the one other device every machine has)."""
    from comfyui_persona.trainers.memory.caching import run_on_cpu

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 4)

        def forward(self, ids, scale=1.0):
            assert ids.device.type == "cpu"
            h = self.embed(ids) * scale
            return h, {"pooled": h.mean(1)}

    enc = Encoder()
    handles = run_on_cpu(enc, torch.device("meta"))
    hidden, extra = enc(torch.tensor([[1, 2, 3]]), scale=2.0)
    assert hidden.device.type == "meta" and hidden.shape == (1, 3, 4)
    assert extra["pooled"].device.type == "meta" and extra["pooled"].shape == (1, 4)
    assert enc.embed.weight.device.type == "cpu"
    for h in handles:
        h.remove()
    assert enc(torch.tensor([[1]]))[0].device.type == "cpu"


def test_validation_sampling_is_predicted_as_it_runs_on_the_cpu():
    """validate_every: sampling beside what training keeps (weights, optimizer states), with the
    VAE and the text encoders placed, is simulated on the meta device and agrees with the same
    pass run on real CPU tensors (live-tensor meter)."""
    from comfyui_persona.models.architectures import instantiate
    from comfyui_persona.trainers.memory.simulate import LiveTensorMeter, run_steps, simulate

    cfg = TrainConfig(base_model="(plan)", dataset="(plan)", family="sd15", resolution=64, validate_every=50)
    predicted = simulate("sd15", cfg, None, "tiny")
    comps = instantiate("sd15", "tiny", tokenizers=False)
    measured = run_steps(comps, cfg, "cpu", steps=1, meter=LiveTensorMeter(), prime=True, validation=True)
    assert predicted["validation_peak_bytes"] == pytest.approx(measured["validation_peak_bytes"], rel=0.1)
    # the sampling pass adds the VAE and the text encoder to what training keeps
    vae_and_text = sum(p.numel() * 4 for m in (comps.vae, comps.text_encoder) for p in m.parameters())
    assert predicted["validation_peak_bytes"] > vae_and_text
    assert simulate("sd15", cfg.model_copy(update={"validate_every": 0}), None, "tiny")["validation_peak_bytes"] is None


def test_a_plan_with_validation_fits_its_sampling_too(plan_cache, monkeypatch):
    monkeypatch.setenv("PERSONA_CACHE", str(plan_cache))
    # the same run without validation planned first: its cached plan is not the one with validation
    assert not plan(_cfg("sd15", 512), 4 * 1024, "cpu", None, "real", bnb=True, compile_ok=True).validation
    p = plan(_cfg("sd15", 512, validate_every=100), 4 * 1024, "cpu", None, "real", bnb=True, compile_ok=True)
    assert p.validation and "and validation sampling" in p.describe()
    assert p.whole_run_peak_mb <= p.usable_mb
    assert all(t["predicted_peak_mb"] > 0 for t in p.tried)


def test_a_plan_that_would_not_load_in_system_memory_reads_the_fp8_file_as_stored(plan_cache, monkeypatch,
                                                                                     tmp_path):
    """FLUX.2 klein 4B LoRA @1024 in 6 GB from an fp8 transformer file (ComfyUI's layout, its
    header at the published width; the tensors' bytes a hole in the file): the fastest plan
    quantizes the base to nf4, which reads the file's fp8 weights as bf16 first, two bytes each.
    On a machine whose available memory holds the file at one byte per weight but not at two,
    the run's plan searches among fp8 bases instead, says why, and loads (the host-memory check
    passes); with memory enough, or too little for either, or a text encoder larger than the
    transformer read as bf16 (the staged load's peak, which fp8 does not lower), the faster plan
    stays, and where it cannot load the check refuses it."""
    from sparse_files import sparse_safetensors

    from comfyui_persona.trainers.memory.host_memory import check_host_memory, load_bytes

    monkeypatch.setenv("PERSONA_CACHE", str(plan_cache))
    monkeypatch.setattr(planner, "_bnb_available", lambda: True)  # the target GPU's bitsandbytes
    prefix = "model.diffusion_model."
    sparse_safetensors(tmp_path / "klein.safetensors", {
        f"{prefix}img_in.weight": ([3072, 128], "F8_E4M3"),  # the width: klein 4B
        f"{prefix}single_blocks.0.linear1.weight": ([36864, 3072], "F8_E4M3"),
        f"{prefix}single_blocks.0.linear1.scale_weight": ([1], "F32")})
    sparse_safetensors(tmp_path / "vae.safetensors", {"w": ([1000], "F32")})
    sparse_safetensors(tmp_path / "qwen_3_4b.safetensors", {"w": ([10000, 2560], "BF16")})
    cfg = _cfg("flux2", 1024, base_model=str(tmp_path / "klein.safetensors"), llm=str(tmp_path / "qwen_3_4b.safetensors"),
               vae=str(tmp_path / "vae.safetensors"), vram_budget_gb=6, memory="auto")
    gpu = torch.device("cuda")  # the target (the budget is given: nothing asks the device)
    as_bf16 = load_bytes(cfg.model_copy(update={"quantize_base": "nf4"}))
    as_stored = load_bytes(cfg.model_copy(update={"quantize_base": "fp8"}), keep_fp8=True)
    assert as_stored < 0.6 * as_bf16

    fastest = planner.plan_for_config(cfg, gpu, available=as_bf16)
    assert fastest.switches["quantize_base"] == "nf4" and fastest.host_memory == ""
    fitted = planner.plan_for_config(cfg, gpu, available=as_bf16 - 1)
    assert fitted.switches["quantize_base"] == "fp8" and fitted.relative_speed < fastest.relative_speed
    assert fitted.whole_run_peak_mb <= fitted.usable_mb == fastest.usable_mb
    assert "system memory: the base is fp8" in fitted.host_memory and fitted.host_memory in fitted.describe()
    assert f"{as_bf16 / 2 ** 30:.1f} GB" in fitted.host_memory and f"{as_stored / 2 ** 30:.1f} GB" in fitted.host_memory
    run = fitted.apply(cfg)
    assert check_host_memory(run, available=as_bf16 - 1, keep_fp8=True) == as_stored
    with pytest.raises(ValueError, match="base_model"):  # what the faster plan would have met
        check_host_memory(fastest.apply(cfg), available=as_bf16 - 1)

    # a distributed launch's two processes on this machine each load it
    assert planner.plan_for_config(cfg, gpu, available=2 * as_bf16 - 1, processes=2).switches == fitted.switches
    too_little = planner.plan_for_config(cfg, gpu, available=as_stored - 1)
    assert too_little.switches == fastest.switches and too_little.host_memory == ""
    sparse_safetensors(tmp_path / "qwen_3_4b.safetensors", {"w": ([50000, 2560], "BF16")})  # 256 MB > 2 x 113 MB
    assert load_bytes(cfg.model_copy(update={"quantize_base": "fp8"}), keep_fp8=True) == load_bytes(cfg)
    assert planner.plan_for_config(cfg, gpu, available=load_bytes(cfg) - 1).switches == fastest.switches


def _qwen3_4b_file(path, dtype: str) -> None:
    """Qwen3-4B's language model as ComfyUI's file holds it (a hole on disk): 36 layers' matrices
    and the embedding table in ``dtype``, the norms in bf16."""
    from sparse_files import sparse_safetensors

    shapes = {"self_attn.q_proj": [4096, 2560], "self_attn.k_proj": [1024, 2560], "self_attn.v_proj": [1024, 2560],
              "self_attn.o_proj": [2560, 4096], "mlp.gate_proj": [9728, 2560], "mlp.up_proj": [9728, 2560],
              "mlp.down_proj": [2560, 9728]}
    tensors = {f"model.layers.{i}.{name}.weight": (shape, dtype) for i in range(36) for name, shape in shapes.items()}
    tensors.update({f"model.layers.{i}.input_layernorm.weight": ([2560], "BF16") for i in range(36)})
    tensors["model.embed_tokens.weight"] = ([151936, 2560], dtype)
    sparse_safetensors(path, tensors)


def test_a_text_encoders_fp8_file_encodes_the_captions_on_the_card_where_its_bf16_file_would_not(
        plan_cache, monkeypatch, tmp_path):
    """FLUX.2 klein 4B LoRA @1024 in 6 GB from ComfyUI's files: Qwen3-4B from its bf16 file (8 GB
    of weights) encodes the captions on the CPU, as in the published plan; from its fp8 file,
    whose matrices are read as stored (about 4.4 GB with the embedding table in bf16), the
    caching phase fits the card and the captions encode there (the second plan is not the
    first one memoised: the text file's weights are part of the plan's key)."""
    from sparse_files import sparse_safetensors

    from comfyui_persona.trainers.memory.host_memory import text_weight_bytes

    monkeypatch.setenv("PERSONA_CACHE", str(plan_cache))
    monkeypatch.setattr(planner, "_bnb_available", lambda: True)  # the target GPU's bitsandbytes
    prefix = "model.diffusion_model."
    sparse_safetensors(tmp_path / "klein.safetensors", {
        f"{prefix}img_in.weight": ([3072, 128], "F8_E4M3"), f"{prefix}single_blocks.0.linear1.weight": ([36864, 3072], "F8_E4M3")})
    sparse_safetensors(tmp_path / "vae.safetensors", {"w": ([1000], "F32")})
    _qwen3_4b_file(tmp_path / "qwen_3_4b.safetensors", "BF16")
    _qwen3_4b_file(tmp_path / "qwen_3_4b_fp8_e4m3fn.safetensors", "F8_E4M3")
    plans, weights = {}, {}
    for name in ("qwen_3_4b", "qwen_3_4b_fp8_e4m3fn"):
        cfg = _cfg("flux2", 1024, base_model=str(tmp_path / "klein.safetensors"), llm=str(tmp_path / f"{name}.safetensors"),
                   vae=str(tmp_path / "vae.safetensors"), vram_budget_gb=6, memory="auto")
        weights[name] = text_weight_bytes(cfg)["text_encoder"]
        plans[name] = planner.plan_for_config(cfg, torch.device("cuda"), available=2 ** 40)
    bf16, fp8 = plans["qwen_3_4b"], plans["qwen_3_4b_fp8_e4m3fn"]
    assert 4.2e9 < weights["qwen_3_4b_fp8_e4m3fn"] < 4.6e9 and weights["qwen_3_4b"] > 8e9
    assert bf16.switches["encode_on_cpu"] == ["text_encoder"]
    assert "text_encoder" not in fp8.switches.get("encode_on_cpu", [])
    assert 0 < fp8.caching["text_encoders_mb"] <= fp8.usable_mb
    assert fp8.whole_run_peak_mb <= fp8.usable_mb and "on the CPU" not in fp8.describe()
    assert "on the CPU (beyond the budget): text_encoder" in bf16.describe()


def test_a_text_encoders_fp8_file_samples_the_class_images_on_the_card_where_its_bf16_file_would_not(tmp_path):
    """FLUX.2 klein 4B LoRA @1024 with prior preservation in 16 GB, from ComfyUI's files: the base
    samples the class images with Qwen3-4B on the CPU when its file is bf16 (the phase would need
    more than the usable memory), and on the card when its file is fp8, whose matrices stay fp8
    there (read as stored, as in the caching phase): what the encoder adds to the phase is what
    the device holds of it."""
    from sparse_files import sparse_safetensors

    from comfyui_persona.trainers.memory.class_images import class_images_bytes, plan_class_images
    from comfyui_persona.trainers.memory.host_memory import text_weight_bytes
    from comfyui_persona.trainers.memory.planner import calibrate

    prefix = "model.diffusion_model."
    sparse_safetensors(tmp_path / "klein.safetensors", {
        f"{prefix}img_in.weight": ([3072, 128], "F8_E4M3"), f"{prefix}single_blocks.0.linear1.weight": ([36864, 3072], "F8_E4M3")})
    sparse_safetensors(tmp_path / "vae.safetensors", {"w": ([1000], "F32")})
    usable = usable_budget(16 * 1024, cuda=True)
    phases, added, held = {}, {}, {}
    for name, dtype in (("qwen_3_4b", "BF16"), ("qwen_3_4b_fp8_e4m3fn", "F8_E4M3")):
        _qwen3_4b_file(tmp_path / f"{name}.safetensors", dtype)
        cfg = _cfg("flux2", 1024, base_model=str(tmp_path / "klein.safetensors"), vae=str(tmp_path / "vae.safetensors"),
                   llm=str(tmp_path / f"{name}.safetensors"), prior_preservation=True)
        phases[name] = plan_class_images(cfg, None, "real", usable, lambda mb: calibrate(mb, True))
        added[name] = class_images_bytes(cfg, None, "real") - class_images_bytes(cfg, None, "real", ("text_encoder",))
        held[name] = text_weight_bytes(cfg)["text_encoder"]
    bf16, fp8 = phases["qwen_3_4b"], phases["qwen_3_4b_fp8_e4m3fn"]
    assert bf16["fits"] and bf16["text_on_cpu"] == ["text_encoder"]
    assert fp8["fits"] and fp8["text_on_cpu"] == [] and fp8["quantize"] == "off" and fp8["stream_blocks"] == 0
    assert bf16["peak_mb"] < fp8["peak_mb"] <= usable
    # the fp8 file: its weights as the device holds them (the live-tensor meter's 64-byte alignment aside)
    assert abs(added["qwen_3_4b_fp8_e4m3fn"] - held["qwen_3_4b_fp8_e4m3fn"]) < 2 ** 20
    # the bf16 file: Qwen3-4B at bf16 (about 4 billion parameters), more than its fp8 file holds by 3 GiB and more
    assert 7.4e9 < added["qwen_3_4b"] < 8.3e9 and added["qwen_3_4b"] - added["qwen_3_4b_fp8_e4m3fn"] > 3 * 2 ** 30
