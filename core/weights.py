"""Weights are found, not fetched silently: ComfyUI's model folders first, then the Persona
cache (``$PERSONA_WEIGHTS`` or ``~/.cache/comfyui-persona/weights``). A missing file gives
one message naming it, every place looked in, and where to download it.

Every pretrained file a Persona feature can use is declared here (:data:`ALL_WEIGHTS`, what
``persona fetch-weights`` fetches); the features import their file from this registry."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .host import comfy_models_dir
from .paths import weights_dir


@dataclass(frozen=True)
class WeightsFile:
    filename: str
    comfy_folder: str  # subfolder of ComfyUI's models/ where users keep it
    url: str
    what: str
    fetchable: bool = True  # False: an archive to unpack by hand (insightface packs)
    torch_hub: bool = False  # torchvision downloads it into torch's hub cache: look there too


FACENET_VGGFACE2 = WeightsFile(
    "20180402-114759-vggface2.pt", "facenet",
    "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt",
    "FaceNet InceptionResnetV1 (VGGFace2) face-recognition weights")


ARCFACE_MODELS = (
    WeightsFile("w600k_r50.onnx", "insightface/models/buffalo_l",
                "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",
                "ArcFace (insightface buffalo_l, inside buffalo_l.zip) face-recognition model", False),
    WeightsFile("glintr100.onnx", "insightface/models/antelopev2",
                "https://github.com/deepinsight/insightface/releases/download/v0.7/antelopev2.zip",
                "ArcFace (insightface antelopev2, inside antelopev2.zip) face-recognition model", False),
)

CLIP_B32 = WeightsFile(
    "open_clip_ViT-B-32_laion2b_s34b_b79k.bin", "clip",
    "https://huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K/resolve/main/open_clip_pytorch_model.bin",
    "OpenCLIP ViT-B-32 (LAION-2B) weights")


LPIPS_BACKBONES = {
    "alex": WeightsFile("alexnet-owt-7be5be79.pth", "lpips",
                        "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", "AlexNet ImageNet weights",
                        torch_hub=True),
    "vgg": WeightsFile("vgg16-397923af.pth", "lpips",
                       "https://download.pytorch.org/models/vgg16-397923af.pth", "VGG16 ImageNet weights",
                       torch_hub=True),
}

INCEPTION = WeightsFile("inception_v3_google-0cc3c7bd.pth", "inception",
                        "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth",
                        "Inception-v3 ImageNet weights (FID/KID features)", torch_hub=True)


DINO_VITS16 = WeightsFile("dino_deitsmall16_pretrain.pth", "dino",
                          "https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth",
                          "DINO ViT-S/16 self-supervised weights (DreamBench's DINO score)", torch_hub=True)
DINOV2_VITS14 = WeightsFile("dinov2_vits14_pretrain.pth", "dino",
                            "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth",
                            "DINOv2 ViT-S/14 self-supervised weights", torch_hub=True)


class WeightsNotFound(FileNotFoundError):
    pass


def cache_dir() -> Path:
    return weights_dir()


def search_paths(spec: WeightsFile) -> list[Path]:
    places = []
    comfy = comfy_models_dir()
    if comfy is not None:
        places.append(comfy / spec.comfy_folder)
    places.append(cache_dir() / spec.comfy_folder)
    places.append(cache_dir())
    if spec.torch_hub:
        places.append(Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints")
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
        f"Download it from {spec.url} into one of those folders as '{spec.filename}'"
        + (" (or run: persona fetch-weights)" if spec.fetchable else " (unpack the archive there)"))


def find_first(specs: tuple[WeightsFile, ...]) -> Path:
    """The first of several acceptable files that is present (one message if none is)."""
    errors = []
    for spec in specs:
        try:
            return find_weights(spec)
        except WeightsNotFound as exc:
            errors.append(str(exc))
    raise WeightsNotFound("none of the accepted files was found:\n" + "\n".join(errors))


def all_weights() -> list[WeightsFile]:
    """Every weights file a Persona feature can use (the registry of fetch-weights)."""
    return [FACENET_VGGFACE2, CLIP_B32, LPIPS_BACKBONES["alex"], LPIPS_BACKBONES["vgg"], INCEPTION,
            DINO_VITS16, DINOV2_VITS14, *ARCFACE_MODELS]


def fetch(spec: WeightsFile, mirror: str | None = None, timeout: float = 60.0) -> Path:
    """Download ``spec`` into the Persona cache (``mirror``: a base URL holding the files by
    name, instead of the original address). Existing files are kept."""
    import urllib.request

    target = cache_dir() / spec.comfy_folder / spec.filename
    if target.is_file() and target.stat().st_size > 0:
        return target
    url = f"{mirror.rstrip('/')}/{spec.filename}" if mirror else spec.url
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as fh:
        while block := resp.read(1 << 20):
            fh.write(block)
    if tmp.stat().st_size == 0:
        tmp.unlink()
        raise OSError(f"{url}: the download is empty")
    tmp.replace(target)
    return target
