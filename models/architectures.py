"""Architectures of every family at two sizes, built from config with random weights.

``tiny``: seconds-fast on a CPU, for tests and the demo. ``real``: the published sizes
(SD1.5, SDXL base 1.0, FLUX.1-dev, Z-Image and FLUX.2 klein 4B with Qwen3-4B, Qwen-Image with
Qwen2.5-VL-7B), for the memory benchmark and the planner; built on the
``meta`` device they cost no memory, which is how the planner simulates a training step.
No model hub is contacted: every config is written out here.
"""
from __future__ import annotations

from typing import Literal

from ..core.paths import cache_root

Size = Literal["tiny", "real"]

_CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
               projection_dim=768, hidden_act="quick_gelu")
_CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
               projection_dim=1280, hidden_act="gelu")
_CLIP_TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  projection_dim=32, hidden_act="quick_gelu")
_VAE_REAL = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                 up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, sample_size=512)
# the tiny VAE downsamples 4x (a 64 px image is a 16x16 latent), so that the tiny denoisers
# work on few positions: test-size training stays fast on a CPU (the shipped face VAE, which
# the demo and the memorisation tests install, is a 2x one: models.tiny_faces)
_VAE_TINY = dict(block_out_channels=(16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 3,
                 up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=8, sample_size=128)

ARCHITECTURES: dict[tuple[str, str], dict] = {
    ("sd15", "tiny"): dict(
        unet=dict(sample_size=16, block_out_channels=(32, 64), layers_per_block=1,
                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                  cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8),
        vae=dict(_VAE_TINY, latent_channels=4), text=_CLIP_TINY),
    ("sd15", "real"): dict(
        unet=dict(sample_size=64, cross_attention_dim=768),
        vae=dict(_VAE_REAL, latent_channels=4), text=_CLIP_L),
    ("sdxl", "tiny"): dict(
        unet=dict(sample_size=16, block_out_channels=(32, 64), layers_per_block=1,
                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2),
                  attention_head_dim=(2, 4), cross_attention_dim=64, use_linear_projection=True,
                  addition_embed_type="text_time", addition_time_embed_dim=8,
                  projection_class_embeddings_input_dim=32 + 6 * 8, norm_num_groups=8),
        vae=dict(_VAE_TINY, latent_channels=4, scaling_factor=0.13025), text=_CLIP_TINY, text_2=_CLIP_TINY),
    ("sdxl", "real"): dict(
        unet=dict(sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                  transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
                  cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
                  addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816),
        vae=dict(_VAE_REAL, latent_channels=4, sample_size=1024, scaling_factor=0.13025, force_upcast=True),
        text=_CLIP_L, text_2=_CLIP_G),
    ("flux", "tiny"): dict(
        transformer=dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=2, attention_head_dim=16,
                         num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                         guidance_embeds=True, axes_dims_rope=(4, 6, 6)),
        vae=dict(_VAE_TINY, latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159,
                 use_quant_conv=False, use_post_quant_conv=False),
        text=_CLIP_TINY,
        t5=dict(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                feed_forward_proj="gated-gelu", relative_attention_num_buckets=32)),
    ("flux", "real"): dict(
        transformer=dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                         num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                         guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
        vae=dict(_VAE_REAL, latent_channels=16, sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159,
                 use_quant_conv=False, use_post_quant_conv=False),
        text=_CLIP_L,
        t5=dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                feed_forward_proj="gated-gelu", relative_attention_num_buckets=32)),
    ("z_image", "tiny"): dict(
        transformer=dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=64, n_layers=2,
                         n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=32, axes_dims=[8, 12, 12],
                         axes_lens=[1536, 512, 512], rope_theta=256.0),
        vae=dict(_VAE_TINY, latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159,
                 use_quant_conv=False, use_post_quant_conv=False),
        qwen3=dict(vocab_size=259, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=8, max_position_embeddings=2048, tie_word_embeddings=True)),
    ("z_image", "real"): dict(  # Z-Image (Base and Turbo share it) with Qwen3-4B
        transformer=dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=3840, n_layers=30,
                         n_refiner_layers=2, n_heads=30, n_kv_heads=30, cap_feat_dim=2560, axes_dims=[32, 48, 48],
                         axes_lens=[1536, 512, 512], rope_theta=256.0),
        vae=dict(_VAE_REAL, latent_channels=16, sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159,
                 use_quant_conv=False, use_post_quant_conv=False),
        qwen3=dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                   num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                   rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True)),
    ("flux2", "tiny"): dict(  # klein's shape: no guidance embedding, Qwen3 deep enough for hidden states 9/18/27
        transformer=dict(patch_size=1, in_channels=128, num_layers=1, num_single_layers=2, attention_head_dim=16,
                         num_attention_heads=2, joint_attention_dim=3 * 16, timestep_guidance_channels=256,
                         # three rotary frequencies per image axis (two would barely tell 16 rows apart)
                         mlp_ratio=3.0, axes_dims_rope=(2, 6, 6, 2), rope_theta=2000, guidance_embeds=False),
        vae=dict(_VAE_TINY, latent_channels=32, use_quant_conv=True, use_post_quant_conv=True),
        qwen3=dict(vocab_size=259, hidden_size=16, intermediate_size=32, num_hidden_layers=28, num_attention_heads=2,
                   num_key_value_heads=1, head_dim=8, max_position_embeddings=2048, tie_word_embeddings=True)),
    ("flux2", "real"): dict(  # FLUX.2 klein 4B with Qwen3-4B
        transformer=dict(patch_size=1, in_channels=128, num_layers=5, num_single_layers=20, attention_head_dim=128,
                         num_attention_heads=24, joint_attention_dim=3 * 2560, timestep_guidance_channels=256,
                         mlp_ratio=3.0, axes_dims_rope=(32, 32, 32, 32), rope_theta=2000, guidance_embeds=False),
        vae=dict(_VAE_REAL, latent_channels=32, sample_size=1024, use_quant_conv=True, use_post_quant_conv=True),
        qwen3=dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                   num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                   rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True)),
}
_KLEIN_4B = ARCHITECTURES[("flux2", "real")]
ARCHITECTURES[("flux2", "klein-9b")] = dict(  # FLUX.2 klein 9B with Qwen3-8B: what a 4096-wide klein file is
    _KLEIN_4B, transformer=dict(_KLEIN_4B["transformer"], num_layers=8, num_single_layers=24, num_attention_heads=32,
                                joint_attention_dim=3 * 4096),
    qwen3=dict(_KLEIN_4B["qwen3"], hidden_size=4096, intermediate_size=12288, tie_word_embeddings=False))

# FLUX.2 dev: FLUX.2's transformer at full size with a guidance embedding, captions read by
# Mistral Small 3.1 (text only: its Pixtral vision tower is never run)
ARCHITECTURES[("flux2_dev", "tiny")] = dict(  # Mistral deep enough for hidden states 10/20/30 (and one more layer,
    # as in the 40-layer model the states read are layers' inputs); ComfyUI's Mistral has 128-wide heads
    transformer=dict(ARCHITECTURES[("flux2", "tiny")]["transformer"], joint_attention_dim=3 * 32, guidance_embeds=True),
    vae=ARCHITECTURES[("flux2", "tiny")]["vae"],
    mistral3=dict(text_config=dict(vocab_size=296, hidden_size=32, intermediate_size=64, num_hidden_layers=31,
                                   num_attention_heads=2, num_key_value_heads=1, head_dim=128,
                                   max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=1e9,
                                   sliding_window=None),
                  vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     head_dim=8, image_size=32, patch_size=16),
                  multimodal_projector_bias=False, spatial_merge_size=2, image_token_index=10,
                  tie_word_embeddings=False))
ARCHITECTURES[("flux2_dev", "real")] = dict(  # FLUX.2 dev (32B) with Mistral-Small-3.1-24B
    transformer=dict(_KLEIN_4B["transformer"], num_layers=8, num_single_layers=48, num_attention_heads=48,
                     joint_attention_dim=3 * 5120, guidance_embeds=True),
    vae=_KLEIN_4B["vae"],
    mistral3=dict(text_config=dict(vocab_size=131072, hidden_size=5120, intermediate_size=32768, num_hidden_layers=40,
                                   num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                                   max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=1e9,
                                   sliding_window=None),
                  vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                     num_attention_heads=16, head_dim=64, image_size=1540, patch_size=14,
                                     rope_theta=10000.0),
                  multimodal_projector_bias=False, projector_hidden_act="gelu", spatial_merge_size=2,
                  image_token_index=10, tie_word_embeddings=False))

# Qwen-Image: a 60-block double-stream transformer over the 16 channels of its own causal video VAE
# (one frame per image), captions read by Qwen2.5-VL (text only: its vision tower is never run)
_QWEN25_VL_ROPE = {"rope_type": "default", "rope_theta": 1000000.0}
ARCHITECTURES[("qwen_image", "tiny")] = dict(
    transformer=dict(patch_size=2, in_channels=64, out_channels=16, num_layers=2, attention_head_dim=16,
                     num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(4, 6, 6), guidance_embeds=False),
    vae=dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],  # ComfyUI reads this shape
             temperal_downsample=[False, True, True]),
    qwen25_vl=dict(text_config=dict(vocab_size=259, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                                    rms_norm_eps=1e-6, bos_token_id=None, eos_token_id=None,
                                    rope_parameters=dict(_QWEN25_VL_ROPE, mrope_section=[2, 1, 1])),
                   vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32,
                                      fullatt_block_indexes=[0]),
                   tie_word_embeddings=False))
ARCHITECTURES[("qwen_image", "real")] = dict(  # Qwen-Image (20B) with Qwen2.5-VL-7B-Instruct
    transformer=dict(patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128,
                     num_attention_heads=24, joint_attention_dim=3584, axes_dims_rope=(16, 56, 56),
                     guidance_embeds=False),
    vae=dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
             temperal_downsample=[False, True, True]),
    qwen25_vl=dict(text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                                    num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                                    max_position_embeddings=128000, rms_norm_eps=1e-6,
                                    rope_parameters=dict(_QWEN25_VL_ROPE, mrope_section=[16, 24, 24])),
                   vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                                      out_hidden_size=3584, fullatt_block_indexes=[7, 15, 23, 31]),
                   tie_word_embeddings=False))


def architecture(family: str, size: str) -> dict:
    try:
        return ARCHITECTURES[(family, size)]
    except KeyError:
        families = "/".join(dict.fromkeys(f for f, _ in ARCHITECTURES))
        sizes = "/".join(sorted({s for f, s in ARCHITECTURES if f == family})) or "tiny/real"
        raise ValueError(f"architecture: no '{size}' {family} (families {families}; sizes {sizes})") from None


def instantiate(family: str, size: str = "tiny", device="cpu", dtype=None, seed: int = 0,
                text_encoders: bool = True, tokenizers: bool = True):
    """Components of ``family`` at ``size`` with random weights, in memory on ``device``
    (``meta``: shapes only). Without ``text_encoders`` they are left out (cached-embedding
    training never holds them)."""
    import torch

    from .components import Components
    from .families import get_family

    fam = get_family(family)
    arch = architecture(family, size)
    torch.manual_seed(seed)
    dtype = dtype or torch.float32
    with torch.device(device):
        denoiser, vae, te, te2 = fam.build_modules(arch, text_encoders)
    for m in (denoiser, vae, te, te2):
        if m is not None and dtype != torch.float32:
            m.to(dtype)
    tok = tok2 = None
    if tokenizers:
        tok, tok2 = random_model_tokenizers(fam)
    return Components(family, tok, te, vae, denoiser, fam.new_scheduler(), f"random:{family}-{size}",
                      f"random-{family}-{size}-{seed}", True, tokenizer_2=tok2, text_encoder_2=te2)


def random_model_tokenizers(fam):
    """The family's tokenizers for random-weight models, written once into the cache."""
    folder = cache_root() / "tokenizers" / fam.name
    marker = folder / ".complete"
    if not marker.is_file():
        fam.write_tokenizers(folder, real=False)
        marker.write_text(fam.name)
    return fam.load_tokenizers(folder)


def meta_components(family: str, base_model: str | None = None, size: str = "real"):
    """Shapes-only components: of the model at ``base_model`` when it is a diffusers folder
    (its own configs), else of the ``size`` architecture of ``family``."""
    from pathlib import Path

    import torch

    from .components import Components
    from .families import get_family

    folder = Path(base_model) if base_model else None
    fam = get_family(family)
    if folder is None or not (folder / "model_index.json").is_file():
        if folder is not None and folder.is_file() and size == "real":  # a family of several published sizes
            size = fam.published_size(folder)
        return instantiate(family, size, device="meta", tokenizers=False)
    with torch.device("meta"):
        denoiser, vae, te, te2 = fam.modules_from_configs(folder)
    return Components(family, None, te, vae, denoiser, fam.new_scheduler(), str(folder), "meta", True,
                      text_encoder_2=te2)
