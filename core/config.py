"""The base of every job config: typed fields, unknown keys rejected, errors naming the field.

Configs are pydantic v2 models (ComfyUI already ships pydantic). They load from JSON or
YAML files, from dicts (node widgets) and from Python keyword arguments alike.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

T = TypeVar("T", bound="JobConfig")


def divisible_by_8(value: int) -> int:
    """Field check shared by every config with a pixel resolution (latents are 1/8 of it)."""
    if value % 8:
        raise ValueError(f"must be divisible by 8 (the VAE works on 1/8 of the pixels), got {value}")
    return value


class ConfigError(ValueError):
    """A config that does not validate; the message names every bad field."""


def _describe(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(config)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the documented fields)"
        lines.append(f"  {field}: {msg}" + (f" (got {err['input']!r})"
                                             if err["type"] != "extra_forbidden"
                                             and not isinstance(err.get("input"), dict) else ""))
    return f"invalid {source}:\n" + "\n".join(lines)


class JobConfig(BaseModel):
    # NaN and infinity are refused like any out-of-range number (a NaN passes every ge/le bound)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any], source: str | None = None) -> T:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, source or cls.__name__)) from None

    @classmethod
    def read_file(cls, path: str | Path) -> dict[str, Any]:
        """The field values in a JSON or YAML file, not yet validated."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file '{path}' does not exist")
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"config file '{path}' is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file '{path}' must hold a mapping of field: value")
        return data

    @classmethod
    def from_file(cls: type[T], path: str | Path, **overrides: Any) -> T:
        data = cls.read_file(path)
        data.update(overrides)
        return cls.from_dict(data, source=f"config file '{path}'")

    @classmethod
    def field_error(cls, field: str, message: str) -> ConfigError:
        """The error of one bad field, worded like a validation error (checks that need the
        file system or a device run after validation and report the same way)."""
        return ConfigError(f"invalid {cls.__name__}:\n  {field}: {message}")

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def digest(self, fields: set[str] | None = None) -> str:
        """A stable short hash of the config (or of some of its fields)."""
        data = self.model_dump(mode="json", include=fields)
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]
