"""Each preprocessing stage has the effect it claims, measured."""
from __future__ import annotations

import cv2
import numpy as np

from comfyui_persona.faces import preprocess


def _lum(image):
    return cv2.cvtColor(image, cv2.COLOR_RGB2LAB)[:, :, 0].astype(np.float64)


def test_grey_world_equalises_channel_means(astronaut):
    cast = np.clip(astronaut.astype(np.float64) * [1.25, 1.0, 0.7], 0, 255).astype(np.uint8)
    means_before = cast.reshape(-1, 3).mean(0)
    means_after = preprocess.grey_world(cast).reshape(-1, 3).mean(0)
    assert np.ptp(means_before) > 20
    assert np.ptp(means_after) < 2.0


def test_clahe_raises_local_contrast_of_a_flat_photo(grace_hopper):
    flat = (grace_hopper.astype(np.float64) * 0.3 + 90).astype(np.uint8)
    before, after = _lum(flat), _lum(preprocess.clahe_l(flat))
    local = lambda l: np.mean([l[y:y + 32, x:x + 32].std() for y in range(0, 480, 32) for x in range(0, 480, 32)])
    assert local(after) > 1.5 * local(before)


def test_contrast_stretch_widens_luminance(astronaut):
    flat = (astronaut.astype(np.float64) * 0.5 + 60).astype(np.uint8)
    assert _lum(preprocess.stretch_contrast(flat)).std() > 1.5 * _lum(flat).std()


def test_denoise_brings_a_noisy_photo_closer_to_the_clean_one(astronaut):
    rng = np.random.default_rng(0)
    noisy = np.clip(astronaut + rng.normal(0, 12, astronaut.shape), 0, 255).astype(np.uint8)
    err = lambda im: np.mean((im.astype(np.float64) - astronaut) ** 2)
    assert err(preprocess.denoise(noisy, 8.0)) < 0.6 * err(noisy)
