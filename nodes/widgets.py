"""ComfyUI widget specs generated from a JobConfig's typed fields (tooltips from the
field descriptions), and the reverse: widget values -> a validated config."""
from __future__ import annotations

import typing
from typing import Any

from annotated_types import Ge, Gt, Le, Lt


def _bounds(info) -> dict:
    out = {}
    for m in info.metadata:
        if isinstance(m, Ge):
            out["min"] = m.ge
        elif isinstance(m, Gt):
            out["min"] = m.gt
        elif isinstance(m, Le):
            out["max"] = m.le
        elif isinstance(m, Lt):
            out["max"] = m.lt
    return out


def widget(model: type, name: str, **override: Any) -> tuple:
    """The ComfyUI input spec of one config field: INT/FLOAT/BOOLEAN/STRING or a combo."""
    info = model.model_fields[name]
    ann = info.annotation
    default = info.get_default(call_default_factory=True)
    opts: dict[str, Any] = {"tooltip": info.description or name}
    if typing.get_origin(ann) is typing.Literal:
        choices = list(typing.get_args(ann))
        opts["default"] = default
        opts.update(override)
        return ([str(c) for c in choices], opts)
    if ann is bool:
        opts["default"] = bool(default)
        opts.update(override)
        return ("BOOLEAN", opts)
    if ann is int:
        opts.update({"default": int(default), "min": 0, "max": 2 ** 31 - 1, "step": 1})
        opts.update(_bounds(info))
        opts.update(override)
        return ("INT", opts)
    if ann is float:
        opts.update({"default": float(default), "min": -1e9, "max": 1e9, "step": 0.01})
        opts.update({k: float(v) for k, v in _bounds(info).items()})
        opts.update(override)
        return ("FLOAT", opts)
    if ann is str:
        opts["default"] = default
        opts.update(override)
        return ("STRING", opts)
    raise TypeError(f"{model.__name__}.{name}: no widget for type {ann}")


def widgets(model: type, names: list[str], **overrides: dict) -> dict[str, tuple]:
    return {n: widget(model, n, **overrides.get(n, {})) for n in names}


def config_from_widgets(model: type, values: dict[str, Any], **extra: Any):
    """Build ``model`` from widget values (combo strings converted back to their type)."""
    data = {}
    for name, value in values.items():
        if name not in model.model_fields:
            continue
        ann = model.model_fields[name].annotation
        if typing.get_origin(ann) is typing.Literal:
            for choice in typing.get_args(ann):
                if str(choice) == str(value):
                    value = choice
        data[name] = value
    data.update(extra)
    return model.from_dict(data, source=f"{model.__name__} (node widgets)")
