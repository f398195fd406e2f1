"""SSIM against scikit-image, FID against scipy's sqrtm, KID on known Gaussians."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import scipy.linalg
from skimage.metrics import structural_similarity

from comfyui_persona.metrics.distribution import fid, frechet_distance, kid
from comfyui_persona.metrics.ssim import ssim, to_tensor


@pytest.fixture(scope="module")
def pairs(astronaut, grace_hopper):
    hop = cv2.resize(grace_hopper, (512, 512))
    rng = np.random.default_rng(0)
    noisy = np.clip(astronaut + rng.normal(0, 20, astronaut.shape), 0, 255).astype(np.uint8)
    return [(astronaut, noisy), (astronaut, cv2.GaussianBlur(astronaut, (0, 0), 2)), (astronaut, hop),
            (hop, cv2.GaussianBlur(hop, (0, 0), 1))]


@pytest.mark.quick
@pytest.mark.parametrize("gaussian", [True, False])
def test_ssim_matches_scikit_image(pairs, gaussian):
    ours = ssim(to_tensor([a for a, _ in pairs]), to_tensor([b for _, b in pairs]), 1.0, gaussian)
    for (a, b), value in zip(pairs, ours.tolist()):
        ref = structural_similarity(a, b, channel_axis=2, data_range=255, gaussian_weights=gaussian,
                                    sigma=1.5, use_sample_covariance=not gaussian)
        assert value == pytest.approx(ref, abs=1e-3)
    assert ssim(to_tensor([pairs[0][0]]), to_tensor([pairs[0][0]])).item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.quick
def test_fid_matches_scipy_sqrtm_and_is_symmetric():
    rng = np.random.default_rng(1)
    a = rng.normal(0, 1, (300, 16))
    b = rng.normal(0.3, 1.4, (300, 16)) @ rng.normal(0, 0.3, (16, 16))
    mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    reference = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-6)
    assert fid(a, b) == pytest.approx(fid(b, a), rel=1e-9)
    assert fid(a, a) == pytest.approx(0.0, abs=1e-8)


def test_kid_is_unbiased_on_known_gaussians():
    rng = np.random.default_rng(2)
    same = [kid(rng.normal(0, 1, (200, 8)), rng.normal(0, 1, (200, 8)), subsets=20, seed=i)[0] for i in range(10)]
    assert abs(np.mean(same)) < 3 * np.std(same) / np.sqrt(len(same)) + 1e-3  # zero on average
    different, _ = kid(rng.normal(0, 1, (200, 8)), rng.normal(0.5, 1, (200, 8)), subsets=20)
    assert different > 0.05


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_agrees_with_the_lpips_package(net, pairs):
    import lpips
    import torch

    from comfyui_persona.metrics.perceptual import LPIPS

    torch.manual_seed(0)
    reference = lpips.LPIPS(net=net, pnet_rand=True, verbose=False).eval()  # random backbone: not shipped
    backbone = {k.split(".", 1)[1]: v for k, v in reference.net.state_dict().items()}
    ours = LPIPS(net, backbone)
    a = to_tensor([p[0] for p in pairs])[:, :, :128, :128]
    b = to_tensor([p[1] for p in pairs])[:, :, :128, :128]
    with torch.no_grad():
        expected = reference(a, b, normalize=True).view(-1)
    assert torch.allclose(ours(a, b), expected, atol=1e-5)
    assert torch.allclose(ours(a, a), torch.zeros(len(a)), atol=1e-7)


def test_lpips_without_backbone_weights_says_what_is_missing(monkeypatch, tmp_path):
    from comfyui_persona.metrics.perceptual import LPIPS
    from comfyui_persona.core.weights import WeightsNotFound

    monkeypatch.setenv("PERSONA_WEIGHTS", str(tmp_path / "w"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsNotFound, match="alexnet-owt-7be5be79.pth"):
        LPIPS("alex")


def test_inception_features_and_missing_weights(monkeypatch, tmp_path, astronaut, grace_hopper):
    from comfyui_persona.metrics.inception import InceptionFeatures, features
    from comfyui_persona.core.weights import WeightsNotFound

    monkeypatch.setenv("PERSONA_WEIGHTS", str(tmp_path / "w"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "t"))
    with pytest.raises(WeightsNotFound, match="inception_v3_google-0cc3c7bd.pth"):
        InceptionFeatures("pretrained")
    model = InceptionFeatures("random")
    f = features(model, [astronaut, grace_hopper, astronaut])
    assert f.shape == (3, 2048) and np.allclose(f[0], f[2])


def test_clip_score_uses_the_exact_clip_tokenizer_and_is_deterministic(astronaut, grace_hopper, monkeypatch):
    import comfyui_persona.core.clip_models as cm
    from comfyui_persona.core.clip_models import load_clip
    from comfyui_persona.metrics.report import _clip_rows

    model, preprocess, tokenizer = load_clip("ViT-B-32", "random")
    ids = tokenizer(["a photo of sks person"])[0]
    # CLIP's own ids: <start> a photo of sks person <end>, zero-padded to 77
    assert ids[:7].tolist() == [49406, 320, 1125, 539, 48136, 2533, 49407] and len(ids) == 77
    assert int(ids[7:].abs().sum()) == 0
    # the ViT-B-32 weights are not on this machine: the score runs on the same architecture
    # with random weights, which is enough to show it is deterministic
    monkeypatch.setattr(cm, "load_clip", lambda *a, **k: (model, preprocess, tokenizer))
    a = _clip_rows([astronaut, grace_hopper], [astronaut], ["a photo of sks person"] * 2)
    b = _clip_rows([astronaut, grace_hopper], [astronaut], ["a photo of sks person"] * 2)
    assert [r.value for r in a] == [r.value for r in b] and len(a) == 2
