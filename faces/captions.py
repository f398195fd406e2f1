"""Captions in the kohya convention (same-stem .txt), from a template, the user, or BLIP."""
from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_BLIP = "Salesforce/blip-image-captioning-base"


def template_caption(cfg, stem: str) -> str:
    caption = cfg.caption_template.format(token=cfg.token, **{"class": cfg.class_noun})
    extra = cfg.extra_text.get(stem, "").strip()
    return f"{caption}, {extra}" if extra else caption


def user_caption(photo_path: str | Path) -> str | None:
    """The text of a same-stem .txt next to the photo, if there is one and it is not empty."""
    txt = Path(photo_path).with_suffix(".txt")
    if txt.is_file():
        text = txt.read_text(encoding="utf-8", errors="replace").strip()
        return text or None
    return None


class BlipCaptioner:
    """BLIP image captioning through transformers, loaded once from a local folder."""

    def __init__(self, model: str):
        from ..core.deps import require

        transformers = require("transformers", "Automatic captions (BLIP)")
        try:
            self.processor = transformers.BlipProcessor.from_pretrained(model, local_files_only=True)
            self.model = transformers.BlipForConditionalGeneration.from_pretrained(
                model, local_files_only=True).eval()
        except (OSError, ValueError) as exc:
            raise FileNotFoundError(
                f"BLIP captioning weights '{model}' were not found locally ({exc}). "
                f"Download them on a machine with internet: "
                f"huggingface-cli download {DEFAULT_BLIP} --local-dir <folder>, then set "
                f"blip_model to that folder.") from None

    def __call__(self, image: np.ndarray) -> str:
        import torch

        inputs = self.processor(images=image, return_tensors="pt")
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=30)
        return self.processor.decode(out[0], skip_special_tokens=True).strip()


@functools.lru_cache(maxsize=2)
def blip_captioner(model: str) -> BlipCaptioner:
    return BlipCaptioner(model)


class Captioner:
    """Decides each photo's caption: user .txt > BLIP (when on and available) > template."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.blip = None
        self.blip_error = None
        if cfg.auto_caption == "blip":
            try:
                self.blip = blip_captioner(cfg.blip_model or DEFAULT_BLIP)
            except (ImportError, FileNotFoundError) as exc:
                self.blip_error = str(exc)
                log.warning("automatic captions are off, using the template instead: %s", exc)

    def caption(self, photo_path: str | Path, stem: str, image: np.ndarray) -> tuple[str, str]:
        """Returns (caption, source) with source one of 'user', 'blip', 'template'."""
        if self.cfg.use_existing_captions:
            text = user_caption(photo_path)
            if text:
                if self.cfg.token not in text:
                    log.warning("%s: its caption does not contain the token '%s'",
                                photo_path, self.cfg.token)
                return text, "user"
        base = template_caption(self.cfg, stem)
        if self.blip is not None:
            return f"{base}, {self.blip(image)}", "blip"
        return base, "template"
