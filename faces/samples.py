"""The embedded default subject: real face photos that ship inside installed packages.

- scikit-image's ``astronaut()`` (Eileen Collins, public domain) is the subject: the demo
  builds a small set of photos of her from it (crops, mirror, rotation, exposure), since
  one photo is all the packages ship of one person;
- matplotlib's ``grace_hopper.jpg`` (public domain) is a different person, the negative
  for identity checks;
- scikit-image's ``coffee()`` is a photo with no face.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance


def astronaut() -> np.ndarray:
    from ..core.deps import require

    data = require("skimage.data", "The embedded sample photos (scikit-image)")
    return np.asarray(data.astronaut())


def coffee() -> np.ndarray:
    from ..core.deps import require

    return np.asarray(require("skimage.data", "The embedded sample photos (scikit-image)").coffee())


def grace_hopper() -> np.ndarray:
    from ..core.deps import require

    mpl = require("matplotlib", "The embedded sample photos (matplotlib)")
    path = os.path.join(mpl.get_data_path(), "sample_data", "grace_hopper.jpg")
    return np.asarray(Image.open(path).convert("RGB"))


def write_subject_photos(folder: str | Path, count: int = 6) -> list[Path]:
    """Write ``count`` (3..8) photos of the astronaut subject to ``folder``."""
    if not 3 <= count <= 8:
        raise ValueError(f"count: 3 to 8 sample photos, got {count}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = Image.fromarray(astronaut())
    variants = [
        ("astronaut_01.png", base),
        ("astronaut_02.png", base.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
        ("astronaut_03.jpg", base.rotate(12, resample=Image.Resampling.BICUBIC)),
        ("astronaut_04.jpg", base.crop((60, 0, 460, 400)).resize((512, 512), Image.Resampling.LANCZOS)),
        ("astronaut_05.png", ImageEnhance.Brightness(base).enhance(0.8)),
        ("astronaut_06.jpg", base.rotate(-10, resample=Image.Resampling.BICUBIC)),
        ("astronaut_07.png", ImageEnhance.Color(base).enhance(0.6)),
        ("astronaut_08.jpg", base.crop((100, 20, 400, 320)).resize((600, 600), Image.Resampling.LANCZOS)),
    ][:count]
    written = []
    for name, img in variants:
        target = folder / name
        if not target.exists():
            img.save(target, quality=95)
        written.append(target)
    return written
