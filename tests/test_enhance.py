"""Enhancement steps: measured effects inside the mask, nothing outside, and the drift check."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from comfyui_persona.faces.identity import get_embedder
from comfyui_persona.generation.enhance import (IdentityGuard, color_match, face_region, film_grain,
                                                reduce_noise, refine_face, sharpen)


@pytest.fixture(scope="module")
def soft_astronaut(astronaut):
    return cv2.GaussianBlur(astronaut, (0, 0), 1.2)


@pytest.fixture(scope="module")
def region(soft_astronaut):
    mask, box = face_region(soft_astronaut)
    assert mask is not None
    return mask, box


def _lap_var(image, where):
    lap = cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.CV_64F)
    return lap[where].var()


def test_sharpen_raises_detail_inside_the_mask_and_leaves_outside_alone(soft_astronaut, region):
    mask, _ = region
    out = sharpen(soft_astronaut, mask, radius=1.5, amount=1.0, threshold=1.0)
    inside, outside = mask > 0.9, mask == 0
    assert _lap_var(out, inside) > 1.3 * _lap_var(soft_astronaut, inside)
    assert np.array_equal(out[outside], soft_astronaut[outside])


def test_color_match_moves_the_face_toward_the_reference(astronaut, grace_hopper, region):
    mask, _ = region
    cast = np.clip(astronaut.astype(np.float32) * [1.2, 0.95, 0.75], 0, 255).astype(np.uint8)
    ref_mask, _ = face_region(astronaut)
    out = color_match(cast, mask, [astronaut], [ref_mask])
    lab = lambda im: cv2.cvtColor(im, cv2.COLOR_RGB2LAB).reshape(-1, 3)[mask.reshape(-1) > 0.9].astype(float).mean(0)
    target = cv2.cvtColor(astronaut, cv2.COLOR_RGB2LAB).reshape(-1, 3)[ref_mask.reshape(-1) > 0.5].astype(float).mean(0)
    assert np.linalg.norm(lab(out) - target) < 0.5 * np.linalg.norm(lab(cast) - target)
    assert np.array_equal(out[mask == 0], cast[mask == 0])


def test_noise_reduction_and_grain(astronaut, region):
    mask, _ = region
    rng = np.random.default_rng(1)
    noisy = np.clip(astronaut + rng.normal(0, 10, astronaut.shape), 0, 255).astype(np.uint8)
    clean = reduce_noise(noisy, mask, 8.0)
    inside = mask > 0.9
    err = lambda im: np.mean((im[inside].astype(float) - astronaut[inside]) ** 2)
    assert err(clean) < 0.7 * err(noisy)
    grained = film_grain(astronaut, None, amount=0.04, seed=3)
    assert 5 < np.std(grained.astype(float) - astronaut) < 15
    assert np.array_equal(film_grain(astronaut, None, amount=0.04, seed=3), grained)  # seeded


def test_drift_check_rejects_a_step_that_damages_identity(astronaut, soft_astronaut, region):
    mask, box = region
    guard = IdentityGuard(get_embedder("dlib"), [astronaut], tolerance=0.01)
    kept, report = guard.apply("sharpen", soft_astronaut, lambda im: sharpen(im, mask))
    assert report.applied and kept is not soft_astronaut
    damaged, report = guard.apply("strong blur", soft_astronaut,
                                  lambda im: refine_face(im, mask, box, lambda c: cv2.GaussianBlur(c, (0, 0), 12)))
    assert not report.applied and damaged is soft_astronaut
    assert report.reason and ("identity dropped" in report.reason or "lost" in report.reason)


def test_refine_face_pastes_only_inside_the_mask(astronaut, region):
    mask, box = region
    out = refine_face(astronaut, mask, box, lambda crop: 255 - crop)
    assert np.array_equal(out[mask == 0], astronaut[mask == 0])
    assert np.abs(out[mask > 0.9].astype(int) - astronaut[mask > 0.9]).mean() > 50


def test_mismatched_mask_size_is_a_clear_error(astronaut):
    with pytest.raises(ValueError, match="mask"):
        sharpen(astronaut, np.ones((10, 10), np.float32))


def test_face_refine_with_a_diffusers_model_is_guarded(tiny_model, astronaut):
    """The headless face refine re-diffuses the crop with a diffusers img2img pipeline; on a
    random-weight model that destroys the face, and the drift check must refuse it."""
    from comfyui_persona.generation.diffusers_backend import DiffusersGenerator
    from comfyui_persona.generation.enhance import enhance_images

    generator = DiffusersGenerator(tiny_model)
    regenerate = generator.refiner("a photo of sks person", strength=0.9, steps=2)
    crop = regenerate(np.ascontiguousarray(astronaut[:64, :64]))
    assert crop.shape == (64, 64, 3)
    (out,), (report,) = enhance_images([astronaut], [astronaut], "face_refine", {"crop_size": 64},
                                       regenerate=regenerate)
    assert not report.applied and out is astronaut
    assert report.score_before > 0.99 and (report.score_after is None or report.score_after < report.score_before)


@pytest.mark.parametrize("family", ["sdxl", "flux", "z_image", "flux2", "flux2_dev", "qwen_image"])
def test_face_refine_redraws_the_crop_at_its_size_from_the_strength_it_is_given(family, request, astronaut):
    """Every family's face refine (``Family.img2img``) returns the crop at its own size (the
    FLUX.1 and Qwen-Image img2img pipelines would draw at their default size), and keeps more
    of it at a lower strength. FLUX.2's pipelines take images only as references to edit, so
    its refine noises the crop's latents itself: the pipeline's shifted schedule must then begin
    at the strength given."""
    import torch

    from comfyui_persona.generation.diffusers_backend import DiffusersGenerator

    generator = DiffusersGenerator(request.getfixturevalue(f"tiny_{family}"), family=family)
    crop = np.ascontiguousarray(cv2.resize(astronaut, (64, 64), interpolation=cv2.INTER_AREA))
    vae, fam = generator.pipe.vae, generator.fam
    with torch.no_grad():  # what the VAE keeps of the crop: where a strength near 0 must stay
        x = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 127.5 - 1
        kept = fam.decode_latents(vae, fam.encode_pixels(vae, x)[0])[0]
    kept = ((kept.permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().numpy()
    change = {}
    for strength in (0.05, 0.9):
        out = generator.refiner("a photo of sks person", strength=strength, steps=10)(crop)
        assert out.shape == crop.shape and out.dtype == np.uint8
        change[strength] = np.abs(out - kept).mean()
        if family.startswith("flux2"):
            assert float(generator.pipe.scheduler.sigmas[0]) == pytest.approx(strength, abs=1e-4)
    assert change[0.05] < change[0.9], change
