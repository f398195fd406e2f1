"""The values Persona's own types carry between nodes (``PERSONA_DATASET``, ``PERSONA_LORA``),
checked where a node takes them.

ComfyUI passes a value that is not a link straight through for a custom type, so a queued
graph can hand a node any JSON in their place (``{"path": "/any/folder", ...}``). What a node
accepts is what Persona's nodes produce: a dict of the known keys and types, whose path lies
where those nodes write (a dataset in ``output/persona/datasets``, a LoRA in ComfyUI's LoRA
folders or Persona's output folder), symlinks resolved. Headless (no ComfyUI) the caller's own
values are taken as given.
"""
from __future__ import annotations

from pathlib import Path

from ..core import confine

_DATASET_KEYS = {"path": str, "token": str, "class_noun": str}
_LORA_KEYS = {"path": str, "token": str, "class_noun": str}
MAX_TEXT = 200


def _checked(value, field: str, kind: str, keys: dict[str, type], produced_by: str) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{field}: a {kind} from {produced_by} is needed (a link), got a {type(value).__name__}")
    for key, typ in keys.items():
        item = value.get(key)
        if not isinstance(item, typ) or not item.strip() or len(item) > (confine.MAX_PATH if key == "path" else MAX_TEXT):
            raise ValueError(f"{field}: the {kind}'s '{key}' is missing or not a valid {typ.__name__}; "
                             f"connect {produced_by}")
    return value


def _inside(path: str, field: str, kind: str, folders: list[Path], where: str) -> Path:
    """``path`` resolved, refused unless inside one of ``folders`` (under confinement only)."""
    text = confine.check_text(path, field)
    if confine.active() is None:
        return Path(text)
    full = Path(text).resolve()
    if not any(full == f or f in full.parents for f in (p.resolve() for p in folders)):
        raise confine.PathRefused(f"{field}: the {kind}'s path is not in {where}; connect the node that made it")
    return full


def dataset(value, datasets_folder: Path, field: str = "dataset") -> dict:
    """A PERSONA_DATASET value as Persona Build Dataset makes it, its folder inside
    ``datasets_folder`` (output/persona/datasets)."""
    value = _checked(value, field, "dataset", _DATASET_KEYS, "Persona Build Dataset")
    path = _inside(value["path"], field, "dataset", [datasets_folder], "output/persona/datasets")
    return {**value, "path": str(path)}


def lora(value, lora_folders: list[Path], field: str = "lora") -> dict:
    """A PERSONA_LORA value as Persona Train LoRA makes it, its file a .safetensors inside one of
    ``lora_folders`` (ComfyUI's LoRA folders, Persona's output folder)."""
    value = _checked(value, field, "LoRA", _LORA_KEYS, "Persona Train LoRA")
    path = _inside(value["path"], field, "LoRA", lora_folders, "ComfyUI's LoRA folders")
    if confine.active() is not None and (path.suffix.lower() != ".safetensors" or not path.is_file()):
        raise ValueError(f"{field}: the LoRA is not a .safetensors file in ComfyUI's LoRA folders")
    return {**value, "path": str(path)}
