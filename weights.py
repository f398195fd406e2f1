"""Weights are found, not fetched silently: ComfyUI's model folders first, then the Persona
cache (``$PERSONA_WEIGHTS`` or ``~/.cache/comfyui-persona/weights``). A missing file gives
one message naming it, every place looked in, and where to download it."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WeightsFile:
    filename: str
    comfy_folder: str  # subfolder of ComfyUI's models/ where users keep it
    url: str
    what: str


FACENET_VGGFACE2 = WeightsFile(
    "20180402-114759-vggface2.pt", "facenet",
    "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt",
    "FaceNet InceptionResnetV1 (VGGFace2) face-recognition weights")


class WeightsNotFound(FileNotFoundError):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("PERSONA_WEIGHTS", Path.home() / ".cache" / "comfyui-persona" / "weights"))


def search_paths(spec: WeightsFile) -> list[Path]:
    places = []
    try:
        import folder_paths  # ComfyUI

        places.append(Path(folder_paths.models_dir) / spec.comfy_folder)
    except ImportError:
        pass
    places.append(cache_dir() / spec.comfy_folder)
    places.append(cache_dir())
    return places


def find_weights(spec: WeightsFile) -> Path:
    places = search_paths(spec)
    for place in places:
        candidate = place / spec.filename
        if candidate.is_file():
            return candidate
    looked = "\n  ".join(str(p) for p in places)
    raise WeightsNotFound(
        f"{spec.what}: '{spec.filename}' was not found. Looked in:\n  {looked}\n"
        f"Download it from {spec.url} into one of those folders.")
