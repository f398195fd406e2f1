"""Shared fixtures: real photos that ship in packages, and a real ComfyUI server."""
from __future__ import annotations


import numpy as np
import pytest

from comfy_server import CACHE, HOSTS, ComfyServer, HostUnavailable


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    from comfyui_persona.faces.samples import astronaut as load

    return load()


@pytest.fixture(scope="session")
def grace_hopper() -> np.ndarray:
    from comfyui_persona.faces.samples import grace_hopper as load

    return load()


@pytest.fixture(scope="session")
def coffee() -> np.ndarray:
    from comfyui_persona.faces.samples import coffee as load

    return load()


@pytest.fixture(scope="session", params=HOSTS)
def comfy(request, tmp_path_factory) -> ComfyServer:
    """A real ComfyUI server with the pack installed, once per host and test session: every
    test that uses it runs on the 2024 ComfyUI and on the current one (see comfy_server)."""
    try:
        server = ComfyServer.create(tmp_path_factory.mktemp(f"comfy-{request.param}"),
                                    f"comfyui-{request.param}", host=request.param)
    except HostUnavailable as exc:
        pytest.skip(f"{request.param}: {exc}")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_model():
    """A tiny SD1.x-shaped diffusers model (random weights, real CLIP tokenizer)."""
    from comfy_server import CACHE
    from comfyui_persona.models.build import build_model

    return build_model(CACHE / "models" / "tiny-sd-v1", "tiny", seed=0)


@pytest.fixture(scope="session")
def face_dataset(tmp_path_factory):
    """4 photos of the astronaut through the real face pipeline, at 64 px."""
    from comfyui_persona.faces.config import PrepareConfig
    from comfyui_persona.faces.dataset import prepare_dataset
    from comfyui_persona.faces.samples import write_subject_photos

    root = tmp_path_factory.mktemp("face_dataset")
    write_subject_photos(root / "photos", count=4)
    result = prepare_dataset(root / "photos", root / "dataset", PrepareConfig(resolution=64))
    assert len(result.accepted) == 4
    return root / "dataset"


@pytest.fixture(scope="session")
def sd15_model():
    """The full SD1.5 architecture with random weights (ComfyUI detects it as SD1.5).
    Built once into the test cache (about 35 s and 4 GB)."""
    from comfy_server import CACHE
    from comfyui_persona.models.build import build_model

    return build_model(CACHE / "models" / "sd15-random", "sd15", seed=0)


@pytest.fixture(scope="session")
def sd15_lora(sd15_model, face_dataset, tmp_path_factory):
    """A LoRA (UNet + text encoder) trained for 2 steps on the SD1.5-shaped model."""
    from comfyui_persona.trainers.config import TrainConfig
    from comfyui_persona.trainers.loop import train

    cfg = TrainConfig(base_model=str(sd15_model), dataset=str(face_dataset),
                      output_dir=str(tmp_path_factory.mktemp("sd15_lora") / "run"), resolution=64,
                      steps=2, rank=4, alpha=4, learning_rate=5e-2, train_text_encoder=True,
                      text_encoder_lr=5e-2, checkpoint_every=0)
    return train(cfg).lora_path


@pytest.fixture(scope="session")
def sd15_single_file(sd15_model, tmp_path_factory):
    """The SD1.5-shaped model as one original-layout .safetensors (as in models/checkpoints)."""
    from comfyui_persona.models.loading import load_components
    from comfyui_persona.models.single_file import save_single_file

    comps = load_components("sd15", sd15_model)
    return save_single_file(tmp_path_factory.mktemp("ckpt") / "persona-sd15.safetensors",
                            comps.denoiser, comps.vae, comps.text_encoder)


@pytest.fixture(scope="session")
def tiny_sdxl():
    """An SDXL-shaped model (two text encoders, size/crop conditioning) with random weights."""
    from comfyui_persona.models.build import build_family_model

    return build_family_model(CACHE / "models" / "tiny-sdxl-v1", "sdxl", "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_flux():
    """A FLUX-shaped model (double and single blocks, guidance embedding, CLIP + T5, 16-channel
    VAE) with random weights."""
    from comfyui_persona.models.build import build_family_model

    return build_family_model(CACHE / "models" / "tiny-flux-v1", "flux", "tiny", seed=0)


def pytest_collection_modifyitems(config, items):
    """``gpu`` tests run only where torch sees a CUDA device (scripts/test_gpu.sh)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="gpu: no CUDA device here (scripts/test_gpu.sh runs these on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
