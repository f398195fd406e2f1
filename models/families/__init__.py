"""Model families: one module per family, registered by name.

``get_family(name)`` is how everything else reaches a family (the config's checks, the
trainer, the planner, the exporter, the model builder). Adding a family means adding one
module with a :class:`~.base.Family` subclass and registering it below.
"""
from __future__ import annotations

from .base import Family, Prediction
from .flux import Flux
from .flux2 import Flux2
from .flux2_dev import Flux2Dev
from .qwen_image import QwenImage
from .sd15 import SD15
from .sdxl import SDXL
from .z_image import ZImage

FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    if family.name in FAMILIES:
        raise ValueError(f"family '{family.name}' is registered twice")
    FAMILIES[family.name] = family
    return family


for _family in (SD15(), SDXL(), Flux(), ZImage(), Flux2(), Flux2Dev(), QwenImage()):
    register(_family)


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"family: '{name}' is not one of {sorted(FAMILIES)}")
    return FAMILIES[name]


__all__ = ["FAMILIES", "Family", "Prediction", "get_family", "register"]
