"""Shared fixtures: real photos that ship in packages, test-size models built once, and real
ComfyUI servers (one boot per host and test session).

Under pytest-xdist (``scripts/test.sh`` runs two workers) every server test of a host runs on
one worker (its group, ``scheduling.py``), so each host boots once; models are built once into the test
cache under a lock that also keeps two workers from building at the same time; each worker
computes on one thread (``OMP_NUM_THREADS``, set by ``scripts/test.sh``)."""
from __future__ import annotations

import os

import numpy as np
import pytest

import scheduling
from built import built_once, heavy_build, model_dir
from comfy_server import HOSTS, NEWEST, ComfyServer, HostUnavailable


def pytest_configure(config):
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads and threads.isdigit():
        import torch

        torch.set_num_threads(int(threads))
    scheduling.configure(config)
    if config.getoption("record_durations") and not hasattr(config, "workerinput"):
        config.pluginmanager.register(scheduling.DurationRecorder(), "persona-durations")


def pytest_addoption(parser):
    parser.addoption("--record-durations", action="store_true",
                     help="merge this run's test durations into tests/durations.json (the heaviest-first order)")


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
    test that uses it runs on the 2024 ComfyUI and on the newest one (hosts.py)."""
    try:
        with heavy_build(f"host-{request.param}"):  # unpacking and provisioning, once
            server = ComfyServer.create(tmp_path_factory.mktemp(f"comfy-{request.param}"),
                                        f"comfyui-{request.param}", host=request.param)
    except HostUnavailable as exc:
        pytest.skip(f"{request.param}: {exc}")
    server.start()
    RUNNING[f"host-{request.param}"] = server
    yield server
    server.stop()


@pytest.fixture(scope="session")
def comfy_today(tmp_path_factory) -> ComfyServer:
    """The newest host serving today's frontend (hosts.TODAY_FRONTEND) instead of its own."""
    from hosts import TODAY_FRONTEND, frontend_root

    try:
        with heavy_build(f"host-{NEWEST}"):
            server = ComfyServer.create(tmp_path_factory.mktemp("comfy-today"), "comfyui-today-frontend",
                                        host=NEWEST, frontend=frontend_root(TODAY_FRONTEND))
    except HostUnavailable as exc:
        pytest.skip(f"{NEWEST}: {exc}")
    server.start()
    server.frontend_version = TODAY_FRONTEND
    RUNNING["host-today-frontend"] = server
    yield server
    server.stop()


# the servers this worker has booted, by the group whose tests use them
RUNNING: dict[str, ComfyServer] = {}


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    """At the end of each group on this worker: a host's server stops once the last test of
    its group has run (a host's tests are one group, so none comes later), so the gigabytes a
    finished server holds (its loaded models) go back for the rest of the run instead of at
    the session's end; and the worker returns the memory the group freed."""
    group = scheduling.group_of(item)
    if nextitem is not None and scheduling.group_of(nextitem) == group:
        return
    if group in RUNNING:
        RUNNING.pop(group).stop()
    # at the end of each group its fixtures are gone; at the end of a module, its module's too
    _give_back_freed_memory(nextitem is None or nextitem.module is not item.module)


def _give_back_freed_memory(module_ended: bool) -> None:
    """Return the heap a test freed to the system (glibc keeps freed small blocks for reuse,
    so a worker that once held a published-size model would keep gigabytes the servers and
    the other worker need); elsewhere nothing to do. ``module_ended``: the frozen objects are
    collected too (:func:`_collect_and_freeze`)."""
    import ctypes
    import sys

    _collect_and_freeze(module_ended)
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _collect_and_freeze(everything: bool = True) -> None:
    """Collect what is garbage, then leave what is still alive (torch, the test modules, the
    session's models) out of the cyclic collector's later walks. A worker holds over a million
    objects, and in tests that train in the worker the collector's walks of them took a fifth of
    its time (test_trainer, test_z_image, test_trainer_ema in one process: 13.0 s of 59 s; 9.4 s
    so). ``everything`` (at the end of a module, when its fixtures are gone): the frozen objects
    rejoin the collection first, so nothing that died since it was frozen outlives its module;
    otherwise (the end of a group within a module) only what is not frozen is walked."""
    import gc

    if everything:
        gc.unfreeze()
    gc.collect()
    gc.freeze()


def pytest_collection_finish(session):
    _collect_and_freeze()  # the test modules and everything they import are loaded


@pytest.fixture
def queue_left_clean(comfy):
    """For tests that queue a long training: whatever happens, the server's queue is cleared,
    the run interrupted and this server's training children ended when the test ends."""
    yield comfy
    comfy.cancel_everything()


@pytest.fixture(scope="session")
def tiny_model():
    """A tiny SD1.x-shaped diffusers model (random weights, real CLIP tokenizer)."""
    from comfyui_persona.models.build import build_model

    with heavy_build("tiny-sd"):
        return build_model(model_dir("tiny-sd"), "tiny", seed=0)


@pytest.fixture(scope="session")
def face_dataset():
    """4 photos of the astronaut through the real face pipeline, at 64 px (prepared once per
    code version; tests only read it)."""
    from comfyui_persona.faces.config import PrepareConfig
    from comfyui_persona.faces.dataset import prepare_dataset
    from comfyui_persona.faces.samples import write_subject_photos

    def build(root):
        write_subject_photos(root / "photos", count=4)
        result = prepare_dataset(root / "photos", root / "dataset", PrepareConfig(resolution=64))
        assert len(result.accepted) == 4

    return built_once("face-dataset", build) / "dataset"


@pytest.fixture(scope="session")
def sd15_model():
    """The full SD1.5 architecture with random weights (ComfyUI detects it as SD1.5).
    Built once into the test cache (about 35 s and 4 GB)."""
    from comfyui_persona.models.build import build_model

    with heavy_build("sd15-random", large=True):
        return build_model(model_dir("sd15-random"), "sd15", seed=0)


@pytest.fixture(scope="session")
def sd15_lora(sd15_model, face_dataset):
    """A LoRA (UNet + text encoder) trained for 2 steps on the SD1.5-shaped model (once per
    code version)."""
    from comfyui_persona.trainers.config import TrainConfig
    from comfyui_persona.trainers.loop import train

    def build(folder):
        cfg = TrainConfig(base_model=str(sd15_model), dataset=str(face_dataset), output_dir=str(folder / "run"),
                          resolution=64, steps=2, rank=4, alpha=4, learning_rate=5e-2, train_text_encoder=True,
                          text_encoder_lr=5e-2, checkpoint_every=0)
        train(cfg)

    return built_once("sd15-lora", build, large=True) / "run" / "lora.safetensors"


@pytest.fixture(scope="session")
def sd15_single_file(sd15_model):
    """The SD1.5-shaped model as one original-layout .safetensors (as in models/checkpoints),
    written once per code version."""
    from comfyui_persona.models.loading import load_components
    from comfyui_persona.models.single_file import save_single_file

    def build(folder):
        comps = load_components("sd15", sd15_model)
        save_single_file(folder / "persona-sd15.safetensors", comps.denoiser, comps.vae, comps.text_encoder)

    return built_once("sd15-single-file", build, large=True) / "persona-sd15.safetensors"


@pytest.fixture(scope="session")
def tiny_sdxl():
    """An SDXL-shaped model (two text encoders, size/crop conditioning) with random weights."""
    from comfyui_persona.models.build import build_family_model

    with heavy_build("tiny-sdxl"):
        return build_family_model(model_dir("tiny-sdxl"), "sdxl", "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_flux():
    """A FLUX-shaped model (double and single blocks, guidance embedding, CLIP + T5, 16-channel
    VAE) with random weights."""
    from comfyui_persona.models.build import build_family_model

    with heavy_build("tiny-flux"):
        return build_family_model(model_dir("tiny-flux"), "flux", "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_z_image():
    """A Z-Image-shaped model (noise and context refiners, single-stream layers, a Qwen3 text
    encoder with a byte-level Qwen tokenizer, 16-channel VAE) with random weights."""
    from comfyui_persona.models.build import build_family_model

    with heavy_build("tiny-z_image"):
        return build_family_model(model_dir("tiny-z_image"), "z_image", "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_flux2():
    """A FLUX.2 klein-shaped model (double and single blocks with shared modulation, no guidance
    embedding, a Qwen3 text encoder deep enough for hidden states 9/18/27 with a byte-level
    Qwen tokenizer, FLUX.2's 32-channel VAE with batch-norm statistics) with random weights."""
    from comfyui_persona.models.build import build_family_model

    with heavy_build("tiny-flux2"):
        return build_family_model(model_dir("tiny-flux2"), "flux2", "tiny", seed=0)



@pytest.fixture(scope="session")
def tiny_flux2_dev():
    """A FLUX.2 dev-shaped model (klein's blocks with a guidance embedding, a Mistral3 text
    encoder with its Pixtral vision tower, 31 layers for hidden states 10/20/30, and a small
    tekken vocabulary converted as Mistral's is) with random weights."""
    from comfyui_persona.models.build import build_family_model

    with heavy_build("tiny-flux2_dev"):
        return build_family_model(model_dir("tiny-flux2_dev"), "flux2_dev", "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_qwen_image():
    """A Qwen-Image-shaped model (double-stream blocks with 3-axis rotary positions, a
    Qwen2.5-VL text encoder with its vision tower and a byte-level Qwen tokenizer, the causal
    video VAE with per-channel latent statistics) with random weights."""
    from comfyui_persona.models.build import build_family_model

    with heavy_build("tiny-qwen_image"):
        return build_family_model(model_dir("tiny-qwen_image"), "qwen_image", "tiny", seed=0)

def pytest_collection_modifyitems(config, items):
    """Tests that must share a worker are grouped and the groups ordered heaviest first
    (scheduling.py); ``gpu`` tests run only where torch sees a CUDA device
    (scripts/test_gpu.sh)."""
    import torch

    scheduling.arrange(config, items)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="gpu: no CUDA device here (scripts/test_gpu.sh runs these on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Groups, not single tests, are what the workers are handed (scheduling.py)."""
    return scheduling.make_scheduler(config, log)
