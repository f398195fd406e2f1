"""Persona's record of an image (what made it, from what, and what was checked) and the
settings of how outputs are marked. The record goes into the file's metadata (a PNG text
chunk named ``persona``, or the JPEG comment) as JSON; it holds hashes, never photos."""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field

from ..core.config import JobConfig
from .payload import Payload

log = logging.getLogger(__name__)

METADATA_KEY = "persona"


def pack_version() -> str:
    try:
        from importlib.metadata import version

        return version("comfyui-persona")
    except Exception:  # noqa: BLE001 - not installed (a cloned pack): the version is unknown, not an error
        return "unknown"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class ProvenanceConfig(JobConfig):
    """How Persona marks the images it saves (every field also settable from the environment
    with ``PERSONA_WATERMARK``, ``PERSONA_C2PA_CERT``, ``PERSONA_C2PA_KEY``, ``PERSONA_C2PA_ALG``)."""

    watermark: bool = Field(True, description="Embed the invisible watermark (off: the record says so).")
    c2pa_cert: str = Field("", description="PEM certificate chain that signs the content credentials (empty: not signed).")
    c2pa_key: str = Field("", description="PEM private key of that certificate.")
    c2pa_alg: Literal["es256", "es384", "es512", "ps256", "ed25519"] = Field(
        "es256", description="Signature algorithm of the certificate's key.")

    @classmethod
    def from_env(cls, **fields) -> "ProvenanceConfig":
        env = {}
        if os.environ.get("PERSONA_WATERMARK", "").lower() in ("0", "off", "false", "no"):
            env["watermark"] = False
        for name in ("c2pa_cert", "c2pa_key", "c2pa_alg"):
            value = os.environ.get(f"PERSONA_{name.upper()}")
            if value:
                env[name] = value
        return cls.from_dict({**env, **fields}, source="provenance settings")

    @property
    def signs(self) -> bool:
        return bool(self.c2pa_cert and self.c2pa_key)


@dataclass
class Record:
    """What made one image. ``lora``/``model``: {"name", "sha256"}; ``gate``: the identity gate's
    result; ``metrics``: a few metric rows."""

    kind: Literal["generated", "enhanced"] = "generated"
    model: dict = field(default_factory=dict)
    lora: dict = field(default_factory=dict)
    seed: int | None = None
    prompt: str = ""
    gate: dict | None = None
    metrics: list | None = None

    @classmethod
    def from_graph(cls, gate_json: str | None, metric_rows: list | None, lora: dict) -> "Record":
        """The record of images saved at the end of a graph: the gate's result (its best
        attempt's seed) and a summary of the metrics, as the nodes pass them on."""
        gate = json.loads(gate_json) if gate_json else None
        seed = gate["attempts"][gate["best_attempt"] - 1]["params"].get("seed") if gate else None
        summary = [{"metric": r["metric"], "value": r["value"]} for r in (metric_rows or [])
                   if r["value"] is not None][:12] or None
        return cls(lora=lora, seed=seed, gate=gate, metrics=summary)

    def payload(self) -> Payload:
        return Payload(self.lora.get("sha256", ""), int(self.seed or 0))

    def to_json(self, watermark: dict, credentials: dict) -> dict:
        return {"generator": f"Persona {pack_version()}", "ai_generated": True,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                **{k: v for k, v in asdict(self).items() if v not in (None, {}, "")},
                "watermark": watermark, "content_credentials": credentials}


def lora_info(path: str | Path | None) -> dict:
    """The ``lora`` of a record: its file name and SHA-256 (empty without a LoRA)."""
    if not path:
        return {}
    path = Path(path)
    if not path.is_file():
        return {"name": path.name, "sha256": "", "note": "file not found"}
    return {"name": path.name, "sha256": file_sha256(path)}
