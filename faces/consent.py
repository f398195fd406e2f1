"""The subject's consent, recorded with the dataset.

``persona prepare --consent consent.yaml`` (or the Build Dataset node's ``consent_file``)
reads a :class:`ConsentRecord`; the dataset's ``manifest.json`` keeps it under ``consent``
with the SHA-256 of the signed consent document (the document itself is never copied) and
the SHA-256 of the whole record. A trained LoRA carries the record's hash in its metadata
(the personal text only when the run asks for it). Training warns when a dataset has no
record, and refuses when ``require_consent`` is set (or ``PERSONA_REQUIRE_CONSENT=1`` on a
shared server).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from pathlib import Path

from pydantic import Field, field_validator

from ..core import confine
from ..core.config import JobConfig

REQUIRE_ENV = "PERSONA_REQUIRE_CONSENT"


class ConsentRecord(JobConfig):
    version: int = Field(1, description="Record format version.")
    subject: str = Field(..., min_length=1, description="Who the photos show (a name or a pseudonym).")
    consented_by: str = Field(..., min_length=1, description="Who gave consent (the subject, or their guardian).")
    date: dt.date = Field(..., description="When consent was given (YYYY-MM-DD).")
    uses: list[str] = Field(..., min_length=1, description="What the subject agreed to, e.g. 'train a personal LoRA', "
                                                           "'portraits for my own use'.")
    document: str = Field("", description="The signed consent document (a file); only its SHA-256 is kept.")
    expires: dt.date | None = Field(None, description="When the consent ends, if it does.")

    @field_validator("uses")
    @classmethod
    def _uses(cls, value: list[str]) -> list[str]:
        value = [u.strip() for u in value if u.strip()]
        if not value:
            raise ValueError("name at least one use the subject agreed to")
        return value

    def manifest_entry(self, base: Path | None = None) -> dict:
        """What the manifest keeps: the record, the document's hash (not its path), and the
        hash of it all."""
        data = self.model_dump(mode="json", exclude={"document"})
        if self.document:
            # on a server the document must lie in ComfyUI's folders like every path a graph
            # names (refused before anything looks at it); headless it is the caller's own
            try:
                doc = confine.relative(self.document, "document", base) if base is not None \
                    else confine.confine(self.document, "document")
            except confine.PathRefused as exc:
                raise self.field_error("document", str(exc).split(": ", 1)[1]) from None
            if not doc.is_file():
                raise self.field_error("document", f"'{confine.shown(doc)}' is not a file")
            data["document_sha256"] = hashlib.sha256(doc.read_bytes()).hexdigest()
        data["record_sha256"] = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
        return data


def read_consent(path: str | Path) -> dict:
    """The manifest entry of the consent file ``path`` (YAML or JSON); a document path in it
    is relative to that file."""
    path = Path(path)
    return ConsentRecord.from_file(path).manifest_entry(path.parent)


def consent_required(configured: bool) -> bool:
    return configured or os.environ.get(REQUIRE_ENV, "").lower() in ("1", "true", "yes", "on")


def lora_metadata(consent: dict | None, full: bool) -> dict[str, str]:
    """The LoRA metadata of a dataset's consent: its hash, and the record itself only if asked."""
    if not consent:
        return {"persona.consent": "none recorded"}
    meta = {"persona.consent_sha256": consent["record_sha256"]}
    if full:
        meta["persona.consent_record"] = json.dumps(consent, sort_keys=True)
    return meta
