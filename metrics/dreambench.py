"""DreamBench (DreamBooth, Ruiz et al. 2023): the subject-driven generation benchmark's
prompts and its three numbers, for one subject.

The benchmark prompts each subject with 25 templates (live subjects: scenes, accessories,
outfits, colours; objects: scenes, surfaces, colours), four images per prompt, and reports

- **DINO**: mean cosine of DINO ViT-S/16 CLS features over all (generated, real) pairs;
- **CLIP-I**: the same with CLIP image embeddings;
- **CLIP-T**: mean cosine of each image's CLIP embedding with its prompt's, the prompt with
  the class noun only (the identifier token removed).

Published on DreamBench's 30 subjects (the DreamBooth paper, Table 1): DreamBooth on Stable
Diffusion 0.668 / 0.803 / 0.305, on Imagen 0.696 / 0.812 / 0.306, real images 0.774 / 0.885
(DINO / CLIP-I). One subject's numbers are not the benchmark's average; they are reported in
its form so that they can be read next to it. Persona's CLIP is OpenCLIP ViT-B-32 (LAION-2B),
the paper's is OpenAI's ViT-B/32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

LIVE = ["in the jungle", "in the snow", "on the beach", "on a cobblestone street", "on top of pink fabric",
        "on top of a wooden floor", "with a city in the background", "with a mountain in the background",
        "with a blue house in the background", "on top of a purple rug in a forest", "wearing a red hat",
        "wearing a santa hat", "wearing a rainbow scarf", "wearing a black top hat and a monocle",
        "in a chef outfit", "in a firefighter outfit", "in a police outfit", "wearing pink glasses",
        "wearing a yellow shirt", "in a purple wizard outfit", "red", "purple", "shiny", "wet", "cube shaped"]
OBJECT = ["in the jungle", "in the snow", "on the beach", "on a cobblestone street", "on top of pink fabric",
          "on top of a wooden floor", "with a city in the background", "with a mountain in the background",
          "with a blue house in the background", "on top of a purple rug in a forest",
          "with a wheat field in the background", "with a tree and autumn leaves in the background",
          "with the Eiffel Tower in the background", "floating on top of water", "floating in an ocean of milk",
          "on top of green grass with sunflowers around it", "on top of a mirror",
          "on top of the sidewalk in a crowded street", "on top of a dirt road", "on top of a white rug",
          "red", "purple", "shiny", "wet", "cube shaped"]
ADJECTIVES = {"red", "purple", "shiny", "wet", "cube shaped"}  # 'a red {token} {class}'
LIVE_CLASSES = {"person", "man", "woman", "boy", "girl", "child", "baby", "dog", "cat", "puppy", "kitten"}
PUBLISHED = [("DreamBooth (Stable Diffusion), DreamBench 30 subjects", 0.668, 0.803, 0.305),
             ("DreamBooth (Imagen), DreamBench 30 subjects", 0.696, 0.812, 0.306),
             ("Real images, DreamBench 30 subjects", 0.774, 0.885, None)]
SEEDS_PER_PROMPT = 4


def prompts(token: str, class_noun: str, kind: str = "auto") -> list[tuple[str, str]]:
    """The 25 (prompt, prompt without the identifier) pairs for the subject; ``kind``: 'live',
    'object', or 'auto' (live for people and pets)."""
    if kind == "auto":
        kind = "live" if class_noun.lower() in LIVE_CLASSES else "object"
    templates = {"live": LIVE, "object": OBJECT}[kind]
    out = []
    for t in templates:
        if t in ADJECTIVES:
            out.append((f"a {t} {token} {class_noun}", f"a {t} {class_noun}"))
        else:
            out.append((f"a {token} {class_noun} {t}", f"a {class_noun} {t}"))
    return out


@dataclass
class Scores:
    dino: float | None
    clip_i: float | None
    clip_t: float | None
    images: int
    notes: list[str]

    def table(self) -> str:
        from ..core.tables import text_table

        shown = lambda v: "skipped" if v is None else f"{v:.3f}"  # noqa: E731
        rows = [(f"this subject ({self.images} images)", shown(self.dino), shown(self.clip_i), shown(self.clip_t))]
        rows += [(name, f"{d:.3f}", f"{i:.3f}", "-" if t is None else f"{t:.3f}") for name, d, i, t in PUBLISHED]
        return text_table(["method", "DINO", "CLIP-I", "CLIP-T"], rows)

    def to_json(self) -> dict:
        return {"DINO": self.dino, "CLIP-I": self.clip_i, "CLIP-T": self.clip_t, "images": self.images,
                "notes": self.notes, "published": [dict(zip(("method", "DINO", "CLIP-I", "CLIP-T"), p))
                                                   for p in PUBLISHED]}


def score(generated: Sequence[np.ndarray], references: Sequence[np.ndarray], plain_prompts: Sequence[str]) -> Scores:
    """The three numbers; a model whose weights are missing gives None and a note naming the file."""
    import torch
    from PIL import Image

    notes = []
    dino = clip_i = clip_t = None
    try:
        from .dino import dino_model, fidelity

        dino = fidelity(dino_model("dino_vits16"), generated, references)
    except (FileNotFoundError, ImportError) as exc:
        notes.append(f"DINO skipped: {exc}")
    try:
        from ..core.clip_models import load_clip

        model, preprocess, tokenizer = load_clip("ViT-B-32", "laion2b")
        with torch.no_grad():
            def embed(images):
                return torch.nn.functional.normalize(model.encode_image(
                    torch.stack([preprocess(Image.fromarray(im)) for im in images])).float(), dim=1)

            gi, ri = embed(generated), embed(references)
            text = torch.nn.functional.normalize(model.encode_text(tokenizer(list(plain_prompts))).float(), dim=1)
        clip_i = float((gi @ ri.T).mean())
        clip_t = float((gi * text).sum(1).mean())
    except (FileNotFoundError, ImportError) as exc:
        notes.append(f"CLIP-I and CLIP-T skipped: {exc}")
    return Scores(dino, clip_i, clip_t, len(generated), notes)
