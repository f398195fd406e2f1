"""Lazy imports of heavy or optional packages, with an error that says what to install.

A missing optional package must disable one feature, never the whole pack, so nothing
optional is imported at module level anywhere in Persona: call :func:`require` inside the
function that needs it.
"""
from __future__ import annotations

import importlib
from types import ModuleType

# import name -> (pip requirement, how to install it)
_INSTALL_HINTS: dict[str, tuple[str, str]] = {
    "facenet_pytorch": (
        "facenet-pytorch",
        "pip install --no-deps facenet-pytorch==2.6.0  (--no-deps: its metadata pins an old torch)",
    ),
    "lpips": ("lpips", "pip install lpips"),
    "imwatermark": ("invisible-watermark",
                    "pip install PyWavelets && pip install --no-deps invisible-watermark==0.2.0"),
    "c2pa": ("c2pa-python", "pip install c2pa-python"),
    "open_clip": ("open-clip-torch", "pip install open-clip-torch"),
    "timm": ("timm", "pip install timm"),
    "diffusers": ("diffusers", "pip install 'comfyui-persona[train]'"),
    "transformers": ("transformers", "pip install 'comfyui-persona[train]'"),
    "accelerate": ("accelerate", "pip install 'comfyui-persona[train]'"),
    "peft": ("peft", "pip install 'comfyui-persona[train]'"),
    "dlib": ("dlib-bin", "pip install dlib-bin face-recognition-models"),
    "face_recognition_models": (
        "face-recognition-models",
        "pip install dlib-bin face-recognition-models",
    ),
    "matplotlib": ("matplotlib", "pip install matplotlib"),
    "scipy": ("scipy", "pip install scipy"),
    "onnxruntime": ("onnxruntime", "pip install onnxruntime"),
    "bitsandbytes": ("bitsandbytes", "pip install bitsandbytes"),
    "requests": ("requests", "pip install requests"),
    "websocket": ("websocket-client", "pip install websocket-client"),
}


class MissingDependencyError(ImportError):
    """An optional package that a feature needs is not installed."""

    def __init__(self, module: str, feature: str):
        requirement, hint = _INSTALL_HINTS.get(module, (module, f"pip install {module}"))
        self.module = module
        self.requirement = requirement
        super().__init__(
            f"{feature} needs the Python package '{requirement}', which is not installed. "
            f"Install it with: {hint}"
        )


def require(module: str, feature: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the package."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        # Only a missing *top-level* package is a missing dependency; an import error
        # inside an installed package is a real bug and must surface unchanged.
        missing = (exc.name or "").split(".")[0]
        if missing != module.split(".")[0]:
            raise
        raise MissingDependencyError(module, feature) from exc


def available(module: str) -> bool:
    """True when ``module`` can be imported (it is imported to find out)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
