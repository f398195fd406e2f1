"""Captions in the kohya convention (same-stem .txt), from a template, the user, or a local
vision-language model (BLIP, Florence-2 and others transformers loads)."""
from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np

from ..core import confine

log = logging.getLogger(__name__)

DEFAULT_BLIP = "Salesforce/blip-image-captioning-base"
DEFAULT_PROMPT = "Describe this photo in one short sentence: clothing, setting, lighting and expression."


def template_caption(cfg, stem: str) -> str:
    caption = cfg.caption_template.format(token=cfg.token, **{"class": cfg.class_noun})
    extra = cfg.extra_text.get(stem, "").strip()
    return f"{caption}, {extra}" if extra else caption


def user_caption(photo_path: str | Path) -> str | None:
    """The text of a same-stem .txt next to the photo, if there is one and it is not empty."""
    txt = Path(photo_path).with_suffix(".txt")
    if txt.is_file() and not confine.allowed(txt):
        log.warning("caption %s links outside ComfyUI's folders: not read", txt.name)
        return None
    if txt.is_file():
        text = txt.read_text(encoding="utf-8", errors="replace").strip()
        return text or None
    return None


class VisionCaptioner:
    """A local vision-language captioning model through transformers, loaded once: any model
    ``AutoModelForImageTextToText`` loads (Florence-2, BLIP, GIT, SmolVLM, Qwen2-VL, ...), from a
    folder or a model name already in the local Hugging Face cache. Florence-2 gets its
    caption task token, models with a chat template ``prompt`` as a user message, the others
    (BLIP, GIT) caption unprompted."""

    def __init__(self, model: str, prompt: str = DEFAULT_PROMPT):
        from ..core.deps import require

        transformers = require("transformers", "Automatic captions")
        try:
            self.processor = transformers.AutoProcessor.from_pretrained(model, local_files_only=True)
            self.model = transformers.AutoModelForImageTextToText.from_pretrained(
                model, local_files_only=True).eval()
        except (OSError, ValueError, KeyError) as exc:
            raise FileNotFoundError(
                f"captioning model '{model}' was not found locally or cannot be loaded ({exc}). "
                f"Download one on a machine with internet, e.g. huggingface-cli download {DEFAULT_BLIP} "
                f"--local-dir <folder> (or microsoft/Florence-2-base), then set the model to that folder.") from None
        self.kind = self.model.config.model_type
        self.prompt = prompt

    def _text(self) -> str | None:
        if self.kind == "florence2":
            return "<CAPTION>"
        if getattr(self.processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt}]}]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True)
        return None

    def __call__(self, image: np.ndarray) -> str:
        import torch

        text = self._text()
        inputs = self.processor(images=image, text=text, return_tensors="pt") if text is not None \
            else self.processor(images=image, return_tensors="pt")
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=40, do_sample=False)
        if text is not None and not self.model.config.is_encoder_decoder and self.kind != "florence2":
            out = out[:, inputs["input_ids"].shape[1]:]  # decoder-only: the reply after the prompt
        return " ".join(self.processor.batch_decode(out, skip_special_tokens=True)[0].split())


@functools.lru_cache(maxsize=2)
def vision_captioner(model: str, prompt: str = DEFAULT_PROMPT) -> VisionCaptioner:
    return VisionCaptioner(model, prompt)


class Captioner:
    """Decides each photo's caption: user .txt > the captioning model (when on and present)
    > template."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.model = None
        self.error = None
        if cfg.auto_caption != "off":
            name = cfg.caption_model or (cfg.blip_model or DEFAULT_BLIP if cfg.auto_caption == "blip" else "")
            try:
                self.model = vision_captioner(name, cfg.caption_prompt)
            except (ImportError, FileNotFoundError) as exc:
                self.error = str(exc)
                log.warning("automatic captions are off, using the template instead: %s", exc)

    def caption(self, photo_path: str | Path, stem: str, image: np.ndarray) -> tuple[str, str]:
        """Returns (caption, source) with source one of 'user', 'blip' / 'vlm' (the model), 'template'."""
        if self.cfg.use_existing_captions:
            text = user_caption(photo_path)
            if text:
                if self.cfg.token not in text:
                    log.warning("%s: its caption does not contain the token '%s'",
                                photo_path, self.cfg.token)
                return text, "user"
        base = template_caption(self.cfg, stem)
        if self.model is not None:
            text = self.model(image)
            if text:
                return f"{base}, {text}", self.cfg.auto_caption
        return base, "template"
