"""Shared fixtures: real photos that ship in packages, and a real ComfyUI server."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from comfy_server import ComfyServer


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    from comfyui_persona.samples import astronaut as load

    return load()


@pytest.fixture(scope="session")
def grace_hopper() -> np.ndarray:
    from comfyui_persona.samples import grace_hopper as load

    return load()


@pytest.fixture(scope="session")
def coffee() -> np.ndarray:
    from comfyui_persona.samples import coffee as load

    return load()


@pytest.fixture(scope="session")
def comfy(tmp_path_factory) -> ComfyServer:
    """The real ComfyUI server with the pack installed, started once per test session."""
    server = ComfyServer.create(tmp_path_factory.mktemp("comfy"), "comfyui")
    server.start()
    yield server
    server.stop()
