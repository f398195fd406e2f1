"""Two subject LoRAs in one file: concatenated (exact) or SVD-merged (rank-cut)."""
from __future__ import annotations

import pytest
import torch

from comfyui_persona.trainers.outputs.merge import delta, merge, modules


def _lora(seed, rank, alpha, conv=False):
    g = torch.Generator().manual_seed(seed)
    shape_d, shape_u = ((rank, 6, 3, 3), (5, rank, 1, 1)) if conv else ((rank, 6), (5, rank))
    return {"lora_unet_a.lora_down.weight": torch.randn(shape_d, generator=g),
            "lora_unet_a.lora_up.weight": torch.randn(shape_u, generator=g),
            "lora_unet_a.alpha": torch.tensor(float(alpha)),
            f"lora_unet_only{seed}.lora_down.weight": torch.randn(rank, 4, generator=g),
            f"lora_unet_only{seed}.lora_up.weight": torch.randn(3, rank, generator=g)}


def _applied(tensors):
    return {m: s * delta(d, u) for m, (d, u, s) in modules(tensors, "merged").items()}


@pytest.mark.quick
@pytest.mark.parametrize("conv", [False, True])
def test_concat_applies_exactly_the_weighted_sum(conv):
    a, b = _lora(1, 2, 1.0, conv), _lora(2, 3, 6.0, conv)
    merged = merge([a, b], [1.0, 0.5], "concat")
    got = _applied(merged)
    pa, pb = modules(a, "a"), modules(b, "b")
    want = 1.0 * pa["lora_unet_a"][2] * delta(*pa["lora_unet_a"][:2]) + 0.5 * pb["lora_unet_a"][2] * delta(*pb["lora_unet_a"][:2])
    assert torch.allclose(got["lora_unet_a"], want, atol=1e-5)
    assert merged["lora_unet_a.lora_down.weight"].shape[0] == 5 and float(merged["lora_unet_a.alpha"]) == 5.0
    assert "lora_unet_only1" in got and "lora_unet_only2" in got  # a module only one LoRA has


def test_svd_is_exact_at_full_rank_and_the_best_cut_below():
    a, b = _lora(1, 2, 2.0), _lora(2, 3, 3.0)
    exact = _applied(merge([a, b], [1.0, 1.0], "concat"))["lora_unet_a"]
    full = _applied(merge([a, b], [1.0, 1.0], "svd", rank=5))["lora_unet_a"]
    assert torch.allclose(full, exact, atol=1e-4)
    cut = _applied(merge([a, b], [1.0, 1.0], "svd", rank=2))["lora_unet_a"]
    s = torch.linalg.svdvals(exact)
    assert torch.linalg.matrix_norm(cut - exact, ord=2) == pytest.approx(float(s[2]), rel=1e-3)  # Eckart-Young


def test_bad_inputs_are_refused_by_name():
    a = _lora(1, 2, 1.0)
    with pytest.raises(ValueError, match="strengths"):
        merge([a, a], [1.0])
    with pytest.raises(ValueError, match="rank"):
        merge([a, a], [1.0, 1.0], "svd")
    with pytest.raises(ValueError, match="b.safetensors: a DoRA LoRA"):
        merge([a, {**a, "lora_unet_a.dora_scale": torch.ones(5, 1)}], [1.0, 1.0], sources=["a.safetensors", "b.safetensors"])
