"""Host memory checked before a base model loads (trainers/memory/host_memory.py): the figure
read from the files' headers as the loaders will build the weights, and a base model larger than
this machine's available memory refused with both figures before anything loads."""
from __future__ import annotations

import pytest

from sparse_files import sparse_safetensors

from comfyui_persona.trainers.config import TrainConfig
from comfyui_persona.trainers.memory.host_memory import MARGIN, available_bytes, check_host_memory, load_bytes, \
    loads_in_stages, reads_fp8_as_stored


def test_a_folder_counts_diffusers_parts_in_fp32_and_text_encoders_as_stored(tmp_path):
    for part in ("unet", "vae", "text_encoder"):
        (tmp_path / part).mkdir()
    unet = sparse_safetensors(tmp_path / "unet" / "diffusion_pytorch_model.safetensors", {"w": ([1000, 1000], "BF16")})
    sparse_safetensors(tmp_path / "vae" / "diffusion_pytorch_model.safetensors", {"w": ([100], "F32")})
    te = sparse_safetensors(tmp_path / "text_encoder" / "model.safetensors", {"w": ([500, 100], "F16")})
    cfg = TrainConfig(base_model=str(tmp_path), dataset="(d)", family="sd15")
    assert load_bytes(cfg) == int((unet * 2 + 400 + te) * MARGIN)
    # a Z-Image folder, captions cached: its text encoder is freed before the transformer loads
    (tmp_path / "unet").rename(tmp_path / "transformer")
    z_image = TrainConfig(base_model=str(tmp_path), dataset="(d)", family="z_image")
    assert load_bytes(z_image) == int((max(unet * 2, te) + 400) * MARGIN)


def test_comfyuis_separate_files_count_as_stored_with_the_text_encoders_fp8_matrices_at_one_byte(tmp_path):
    """A FLUX.2 transformer file in bf16 with its fp8 text encoder and fp32 VAE: the loaders
    assign the files' tensors, so the transformer counts as stored and the VAE as stored, not
    everything at fp32; the text encoder's fp8 matrices are read as stored (a byte each and a
    float32 scale per row), its embedding table (no linear layer) as bf16. With prior
    preservation (class images sampled with both) all three are loaded at once; with the
    captions cached and nothing else, the text encoder is freed before the transformer loads,
    so the peak is the VAE with the larger of the two. FLUX.1's T5 reads its feed-forward
    outputs as bf16 (``Family.text_quantize_skip``)."""
    base = sparse_safetensors(tmp_path / "flux2.safetensors", {"w": ([1000, 1000], "BF16")})
    sparse_safetensors(tmp_path / "qwen_3_4b_fp8.safetensors", {
        "model.layers.0.mlp.up_proj.weight": ([1000, 500], "F8_E4M3"),
        "model.embed_tokens.weight": ([300, 500], "F8_E4M3"), "model.norm.weight": ([500], "BF16")})
    llm = 1000 * 500 + 4 * 1000 + 2 * 300 * 500 + 2 * 500
    vae = sparse_safetensors(tmp_path / "flux2-vae.safetensors", {"w": ([100, 10], "F32")})
    cfg = TrainConfig(base_model=str(tmp_path / "flux2.safetensors"), dataset="(d)", family="flux2",
                      llm=str(tmp_path / "qwen_3_4b_fp8.safetensors"), vae=str(tmp_path / "flux2-vae.safetensors"),
                      prior_preservation=True, class_prompt="a photo of a person")
    assert not loads_in_stages(cfg)
    assert load_bytes(cfg) == int((base + llm + vae) * MARGIN)
    staged = cfg.model_copy(update={"prior_preservation": False})
    assert loads_in_stages(staged)
    assert load_bytes(staged) == int((max(base, llm) + vae) * MARGIN)
    uncached = cfg.model_copy(update={"prior_preservation": False, "cache_text_embeddings": False})
    assert not loads_in_stages(uncached) and load_bytes(uncached) == load_bytes(cfg)
    sd15 = TrainConfig(base_model=str(tmp_path / "flux2.safetensors"), dataset="(d)", family="sd15")
    assert load_bytes(sd15) == int(2 * base * MARGIN)  # an SD checkpoint's parts are built in fp32
    sparse_safetensors(tmp_path / "t5xxl_fp8_e4m3fn.safetensors", {
        "encoder.block.0.layer.1.DenseReluDense.wi_0.weight": ([1000, 500], "F8_E4M3"),
        "encoder.block.0.layer.1.DenseReluDense.wo.weight": ([500, 1000], "F8_E4M3"),
        "shared.weight": ([300, 500], "F8_E4M3")})
    clip = sparse_safetensors(tmp_path / "clip_l.safetensors", {"text_model.w": ([100, 10], "BF16")})
    flux = TrainConfig(base_model=str(tmp_path / "flux2.safetensors"), dataset="(d)", family="flux",
                       clip_l=str(tmp_path / "clip_l.safetensors"), t5=str(tmp_path / "t5xxl_fp8_e4m3fn.safetensors"),
                       vae=str(tmp_path / "flux2-vae.safetensors"), prior_preservation=True,
                       class_prompt="a photo of a person")
    t5 = 1000 * 500 + 4 * 1000 + 2 * 500 * 1000 + 2 * 300 * 500
    assert load_bytes(flux) == int((base + clip + t5 + vae) * MARGIN)


def test_a_run_that_quantizes_to_fp8_counts_the_files_fp8_weights_at_one_byte(tmp_path):
    """Qwen-Image's transformer file in fp8 (a matrix weight, a bias, a 1-D norm beside it): a
    run that quantizes its base to fp8 reads the fp8 matrix weights as stored (a byte each and a
    float32 scale per row), so loading takes about half of what reading them as bf16 takes. Only
    such runs read so: not with another quantization, a training adapter to merge, a diffusers
    folder, or class images sampled with an nf4 base."""
    sparse_safetensors(tmp_path / "qwen_image_fp8_e4m3fn.safetensors", {
        "model.diffusion_model.a.weight": ([2000, 1000], "F8_E4M3"), "model.diffusion_model.a.bias": ([2000], "BF16"),
        "model.diffusion_model.n.weight": ([1000], "F8_E4M3")})
    llm = sparse_safetensors(tmp_path / "qwen_2.5_vl_fp8.safetensors", {"w": ([1000, 500], "F8_E4M3")})
    vae = sparse_safetensors(tmp_path / "qwen_image_vae.safetensors", {"w": ([100, 10], "F32")})
    cfg = TrainConfig(base_model=str(tmp_path / "qwen_image_fp8_e4m3fn.safetensors"), dataset="(d)",
                      family="qwen_image", llm=str(tmp_path / "qwen_2.5_vl_fp8.safetensors"),
                      vae=str(tmp_path / "qwen_image_vae.safetensors"), quantize_base="fp8",
                      prior_preservation=True, class_prompt="a photo of a person")
    as_bf16 = 2 * 2_000_000 + 2 * 2000 + 2 * 1000
    as_stored = 2_000_000 + 4 * 2000 + 2 * 2000 + 2 * 1000  # the 1-D fp8 weight is no layer's matrix: bf16
    assert load_bytes(cfg) == int((as_bf16 + 2 * llm + vae) * MARGIN)
    assert load_bytes(cfg, keep_fp8=True) == int((as_stored + 2 * llm + vae) * MARGIN)
    assert reads_fp8_as_stored(cfg) and reads_fp8_as_stored(cfg, "fp8") and reads_fp8_as_stored(cfg, "off")
    assert not reads_fp8_as_stored(cfg, "nf4")  # the class images would sample with Persona's fp8 layer, not nf4
    for change in ({"quantize_base": "off"}, {"quantize_base": "nf4"},
                   {"training_adapter": str(tmp_path / "qwen_image_vae.safetensors")}, {"base_model": str(tmp_path)}):
        assert not reads_fp8_as_stored(cfg.model_copy(update=change)), change
    # a run set by hand to another base that cannot load so is told what would
    nf4 = cfg.model_copy(update={"quantize_base": "nf4", "prior_preservation": False})
    fits_fp8 = load_bytes(nf4.model_copy(update={"quantize_base": "fp8"}), keep_fp8=True)
    with pytest.raises(ValueError, match=rf"set quantize_base 'fp8' \(the file's fp8 weights read as stored: about "
                                         rf"{fits_fp8 / 2 ** 30:.1f} GB"):
        check_host_memory(nf4, available=fits_fp8)
    with pytest.raises(ValueError) as refused:  # too little for either: no such advice
        check_host_memory(nf4, available=fits_fp8 - 1)
    assert "quantize_base" not in str(refused.value)


def test_a_base_model_larger_than_the_available_memory_is_refused_before_it_loads(tmp_path):
    """A FLUX-sized transformer file (24 GB in bf16 on disk, a hole here): 48 GB as loaded."""
    have = available_bytes()
    rows = have // 2 // 3072 + 1  # bf16 on disk: more than half the available memory, so fp32 is more than all
    path = tmp_path / "big_transformer.safetensors"
    sparse_safetensors(path, {"w": ([rows, 3072], "BF16")})
    cfg = TrainConfig(base_model=str(path), dataset="(d)", family="sd15")
    with pytest.raises(ValueError, match=r"base_model: loading 'big_transformer.safetensors' needs about "
                                         r"[\d.]+ GB of CPU memory .* and [\d.]+ GB is available"):
        check_host_memory(cfg)
    small = tmp_path / "small.safetensors"
    sparse_safetensors(small, {"w": ([1000, 1000], "BF16")})
    ok = TrainConfig(base_model=str(small), dataset="(d)", family="sd15")
    assert check_host_memory(ok) == int(4_000_000 * MARGIN)
    with pytest.raises(ValueError, match="in 2 processes"):
        check_host_memory(ok, available=int(4_000_000 * MARGIN) + 1, processes=2)


@pytest.mark.parametrize("staged", [True, False])
def test_the_text_encoder_is_freed_before_the_transformer_loads(tiny_z_image, face_dataset, tmp_path, monkeypatch,
                                                                caplog, staged):
    """Z-Image from ComfyUI's separate files, captions cached: the Qwen3 text encoder loads, the
    captions are encoded, and it is gone (collected, not merely unreferenced by the run) when the
    transformer file is read, so the two are never in memory together; the run trains as
    before. Captions encoded every step (not cached) keep the text encoder, so there the
    transformer loads beside it, as the host-memory figure says."""
    import gc
    import logging
    import weakref

    from comfy_files import write_z_image_files
    from comfyui_persona.models.components import Components
    from comfyui_persona.models.families import get_family
    from comfyui_persona.trainers.loop import train
    from trainer_helpers import tiny_config

    monkeypatch.setenv("PERSONA_CACHE", str(tmp_path / "cache"))
    files = write_z_image_files(tiny_z_image, tmp_path / "files", tmp_path / "cache")
    family = type(get_family("z_image"))
    read, seen = family.load_single_file, {}

    def load_single_file(self, *args, **kwargs):  # the real loader, the text encoder watched
        comps = read(self, *args, **kwargs)
        seen["text_encoder"] = weakref.ref(comps.text_encoder)
        return comps

    load_denoiser = Components.load_denoiser

    def watched_load_denoiser(self, *args):  # the real one, after noting what is alive when it reads the file
        if self.denoiser is None:
            gc.collect()
            seen["encoder alive"] = seen["text_encoder"]() is not None
        return load_denoiser(self, *args)

    monkeypatch.setattr(family, "load_single_file", load_single_file)
    monkeypatch.setattr(Components, "load_denoiser", watched_load_denoiser)
    cfg = tiny_config(files["base_model"], face_dataset, tmp_path / "run", family="z_image", llm=str(files["llm"]),
                      vae=str(files["vae"]), steps=2, llm_max_length=64, cache_text_embeddings=staged)
    assert loads_in_stages(cfg) is staged
    with caplog.at_level(logging.INFO):
        result = train(cfg)
    assert seen["encoder alive"] is not staged
    assert result.steps_done == 2 and result.lora_path.is_file()
    assert ("before the denoiser loads" in caplog.text) is staged
