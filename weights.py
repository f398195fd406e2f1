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


ARCFACE_MODELS = (
    WeightsFile("w600k_r50.onnx", "insightface/models/buffalo_l",
                "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",
                "ArcFace (insightface buffalo_l) face-recognition model"),
    WeightsFile("glintr100.onnx", "insightface/models/antelopev2",
                "https://github.com/deepinsight/insightface/releases (antelopev2.zip)",
                "ArcFace (insightface antelopev2) face-recognition model"),
)

CLIP_B32 = WeightsFile(
    "open_clip_ViT-B-32_laion2b_s34b_b79k.bin", "clip",
    "https://huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K/resolve/main/open_clip_pytorch_model.bin "
    "(save it under the name shown)",
    "OpenCLIP ViT-B-32 (LAION-2B) weights")


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


def find_first(specs: tuple[WeightsFile, ...]) -> Path:
    """The first of several acceptable files that is present (one message if none is)."""
    errors = []
    for spec in specs:
        try:
            return find_weights(spec)
        except WeightsNotFound as exc:
            errors.append(str(exc))
    raise WeightsNotFound("none of the accepted files was found:\n" + "\n".join(errors))
