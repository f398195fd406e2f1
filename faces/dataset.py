"""Building a training dataset directory from a folder of photos, idempotently.

Layout (kohya convention plus a manifest)::

    DATASET/<stem>.png        aligned, preprocessed image
    DATASET/<stem>.txt        its caption
    DATASET/masks/<stem>.png  its feathered face mask (8-bit)
    DATASET/<stem>__<kind>.*  wider crops (head_shoulders, half_body) with caption and mask,
                              listed under the photo's ``crops`` (``wider_crops``)
    DATASET/manifest.json     every input photo once: source path and hash, box,
                              landmarks, scores, accepted/rejected and why

Source photos are only ever read. A second run with the same photos and config rewrites
nothing; a new or changed photo is the only one processed; a removed photo's outputs go.
"""
from __future__ import annotations

import contextvars
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from .captions import Captioner
from .config import PrepareConfig
from .detect import FaceDetector
from .photos import PhotoError, file_sha256, list_photos, load_photo
from .pipeline import AlignedPhoto, align_photo

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def max_workers() -> int:
    """Photos processed at once: ``$PERSONA_PREPARE_WORKERS`` or the CPU count (at most 4)."""
    env = os.environ.get("PERSONA_PREPARE_WORKERS")
    return max(1, int(env)) if env else max(1, min(os.cpu_count() or 1, 4))
MANIFEST_VERSION = 1

Progress = Callable[[int, int, str], None]


@dataclass
class PrepareResult:
    dataset_dir: Path
    entries: list[dict]
    processed: int = 0
    reused: int = 0
    removed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def accepted(self) -> list[dict]:
        return [e for e in self.entries if e["status"] == "accepted"]

    @property
    def rejected(self) -> list[dict]:
        return [e for e in self.entries if e["status"] == "rejected"]

    def summary_rows(self) -> list[tuple[str, str, str]]:
        return [(Path(e["source"]).name, "held out" if e.get("holdout") else e["status"],
                 e.get("reason") or e.get("caption", "")) for e in self.entries]


def _stems(photos: list[Path]) -> dict[Path, str]:
    counts: dict[str, int] = {}
    for p in photos:
        counts[p.stem] = counts.get(p.stem, 0) + 1
    return {p: (p.stem if counts[p.stem] == 1 else f"{p.stem}_{p.suffix.lstrip('.').lower()}")
            for p in photos}


def read_manifest(dataset_dir: str | Path) -> dict | None:
    path = Path(dataset_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"dataset manifest '{path}' is not valid JSON ({exc}); "
                         f"delete it to rebuild the dataset") from None
    if data.get("version") != MANIFEST_VERSION:
        return None
    return data


OUTPUT_KEYS = ("image", "caption_file", "mask")


def _files(entry: dict) -> list[str]:
    """Every file an entry wrote: its own and its wider crops'."""
    return [e[k] for e in [entry, *entry.get("crops", [])] for k in OUTPUT_KEYS if e.get(k)]


def _outputs_exist(dataset_dir: Path, entry: dict) -> bool:
    if entry["status"] != "accepted":
        return True
    return all((dataset_dir / f).is_file() for f in _files(entry))


def _write_image(dataset_dir: Path, stem: str, image: np.ndarray, mask: np.ndarray, caption: str,
                 image_format: str) -> dict:
    image_name = f"{stem}.{image_format}"
    pil = Image.fromarray(image)
    if image_format == "png":
        pil.save(dataset_dir / image_name, compress_level=1)
    else:
        pil.save(dataset_dir / image_name, quality=95)
    (dataset_dir / f"{stem}.txt").write_text(caption + "\n", encoding="utf-8")
    (dataset_dir / "masks").mkdir(exist_ok=True)
    mask_u8 = np.clip(mask * 255.0 + 0.5, 0, 255).astype(np.uint8)
    Image.fromarray(mask_u8, mode="L").save(dataset_dir / "masks" / f"{stem}.png", compress_level=1)
    return {"image": image_name, "caption_file": f"{stem}.txt", "mask": f"masks/{stem}.png"}


def _write_accepted(dataset_dir: Path, stem: str, result: AlignedPhoto, caption: str, cfg: PrepareConfig) -> dict:
    out = _write_image(dataset_dir, stem, result.image, result.mask, caption, cfg.image_format)
    crops = []
    for crop in result.crops:
        text = f"{caption}, {cfg.crop_captions[crop.kind]}" if cfg.crop_captions.get(crop.kind) else caption
        files = _write_image(dataset_dir, f"{stem}__{crop.kind}", crop.image, crop.mask, text, cfg.image_format)
        crops.append({"kind": crop.kind, **files, "caption": text, "box": list(crop.box),
                      "size": [int(crop.image.shape[1]), int(crop.image.shape[0])]})
    if crops:
        out["crops"] = crops
    return out


def _remove_outputs(dataset_dir: Path, entry: dict) -> None:
    for name in _files(entry):
        target = dataset_dir / name
        if target.is_file():
            target.unlink()


def process_file(path: Path, stem: str, cfg: PrepareConfig, detector: FaceDetector | None,
                 captioner: Captioner, dataset_dir: Path, sha: str) -> dict:
    """Process one photo and write its outputs; returns its manifest entry."""
    entry: dict = {"source": str(path), "sha256": sha, "stem": stem}
    try:
        photo = load_photo(path, max_side=cfg.detect_max_side, max_pixels=cfg.max_pixels)
    except PhotoError as exc:
        entry.update(status="rejected", reason=exc.reason, detail=exc.detail)
        return entry
    entry.update(source_size=list(photo.full_size), source_mode=photo.mode,
                 exif_rotated=photo.exif_rotated)
    if photo.frames > 1:
        entry.update(frames=photo.frames, frame_used=0)

    def load(max_side):
        again = load_photo(path, max_side=max_side, max_pixels=cfg.max_pixels)
        return again.pixels, again.scale

    result = align_photo(photo.pixels, photo.scale, photo.full_size, cfg, detector=detector,
                         load=load, box=cfg.subject_boxes.get(stem))
    entry["faces_found"] = result.faces_found
    if result.face is not None:
        entry.update(result.face.to_json())
    if result.matrix is not None:
        entry["matrix"] = [[round(float(v), 6) for v in row] for row in result.matrix]
    if result.aligned_landmarks is not None:
        entry["aligned_landmarks"] = [[round(float(x), 2), round(float(y), 2)]
                                      for x, y in result.aligned_landmarks]
    if result.scores:
        entry["scores"] = result.scores
    if not result.accepted:
        entry.update(status="rejected", reason=result.reason)
        return entry
    caption, source = captioner.caption(path, stem, result.image)
    entry.update(status="accepted", caption=caption, caption_source=source,
                 preprocess=result.preprocess)
    entry.update(_write_accepted(dataset_dir, stem, result, caption, cfg))
    return entry


def prepare_dataset(photos_dir: str | Path, dataset_dir: str | Path,
                    cfg: PrepareConfig | None = None, progress: Progress | None = None,
                    consent: dict | None = None) -> PrepareResult:
    """Build or update ``dataset_dir`` from the photos in ``photos_dir``. ``consent``: the
    subject's consent record (``faces.consent.read_consent``); without one, a record the
    dataset already has is kept."""
    start = time.perf_counter()
    cfg = cfg or PrepareConfig()
    photos_dir, dataset_dir = Path(photos_dir).resolve(), Path(dataset_dir).resolve()
    photos = list_photos(photos_dir)
    if dataset_dir == photos_dir:
        raise ValueError("dataset_dir: must not be the photos folder itself (sources are never overwritten)")
    dataset_dir.mkdir(parents=True, exist_ok=True)
    previous = read_manifest(dataset_dir) or {}
    digest = cfg.processing_digest()
    same_config = previous.get("config_digest") == digest
    old_entries = {e["source"]: e for e in previous.get("photos", [])} if same_config else {}
    if previous and not same_config:
        for entry in previous.get("photos", []):
            _remove_outputs(dataset_dir, entry)

    entries: list[dict | None] = [None] * len(photos)
    todo = []
    reused = 0
    stems = _stems(photos)
    if isinstance(cfg.holdout, list):  # before any photo is processed
        unknown = [s for s in cfg.holdout if s not in set(stems.values())]
        if unknown:
            raise ValueError(f"holdout: no photo in '{photos_dir}' has the stem {', '.join(map(repr, unknown))}")
    for i, path in enumerate(photos):
        sha = file_sha256(path)
        old = old_entries.get(str(path))
        if old and old.get("sha256") == sha and old.get("stem") == stems[path] \
                and _outputs_exist(dataset_dir, old):
            entries[i] = old
            reused += 1
            continue
        if old:
            _remove_outputs(dataset_dir, old)
        todo.append((i, path, sha))
    if todo:
        detector = FaceDetector(min_face_size=20) if cfg.subject == "face" else None
        captioner = Captioner(cfg)
        done = reused
        if progress:
            progress(done, len(photos), "")
        # Photos are independent: a few run at once (decode, MTCNN and the warp release
        # the GIL); a captioning model stays on one thread.
        workers = 1 if captioner.model is not None else min(max_workers(), len(todo))
        import torch

        threads = torch.get_num_threads()
        # the workers share the cores: each gets its part of torch's intra-op threads
        torch.set_num_threads(max(1, threads // workers))
        try:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                # each worker runs in a copy of this context: the confinement a node set holds there too
                futures = {pool.submit(contextvars.copy_context().run, process_file, path, stems[path], cfg,
                                       detector, captioner, dataset_dir, sha): (i, path) for i, path, sha in todo}
                for future in as_completed(futures):
                    i, path = futures[future]
                    entries[i] = future.result()
                    done += 1
                    if progress:
                        progress(done, len(photos), path.name)
        finally:
            torch.set_num_threads(threads)
    processed = len(todo)
    entries = [e for e in entries if e is not None]
    if progress:
        progress(len(photos), len(photos), "")

    mark_holdout(entries, cfg.holdout)
    current = {str(p) for p in photos}
    removed = [src for src in old_entries if src not in current]
    for src in removed:
        _remove_outputs(dataset_dir, old_entries[src])

    manifest = {
        "version": MANIFEST_VERSION,
        "photos_dir": str(photos_dir),
        "config_digest": digest,
        "config": cfg.to_json(),
        **({"consent": consent or previous["consent"]} if (consent or previous.get("consent")) else {}),
        "summary": {"photos": len(entries),
                    "accepted": sum(e["status"] == "accepted" for e in entries),
                    "rejected": sum(e["status"] == "rejected" for e in entries),
                    "held_out": sum(bool(e.get("holdout")) for e in entries)},
        "photos": entries,
    }
    text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
    target = dataset_dir / MANIFEST
    if not target.is_file() or target.read_text(encoding="utf-8") != text:
        tmp = target.with_suffix(".json.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
    result = PrepareResult(dataset_dir, entries, processed, reused, removed,
                           time.perf_counter() - start)
    log.info("dataset %s: %d accepted, %d rejected (%d processed, %d unchanged)", dataset_dir,
             len(result.accepted), len(result.rejected), processed, reused)
    return result


def mark_holdout(entries: list[dict], holdout: int | list[str]) -> None:
    """Mark the held-out photos (``"holdout": true``): the last ``holdout`` accepted photos by
    stem, or the accepted photos with the listed stems. At least one photo stays to train on."""
    accepted = sorted((e for e in entries if e["status"] == "accepted"), key=lambda e: e["stem"])
    if isinstance(holdout, int):
        chosen = {e["stem"] for e in accepted[len(accepted) - holdout:]} if holdout else set()
    else:
        stems = {e["stem"] for e in accepted}
        unknown = [s for s in holdout if s not in stems]
        if unknown:
            raise ValueError(f"holdout: {', '.join(map(repr, unknown))} is not an accepted photo's stem "
                             f"(accepted: {', '.join(sorted(stems))})")
        chosen = set(holdout)
    if accepted and len(chosen) >= len(accepted):
        raise ValueError(f"holdout: holding out {len(chosen)} of {len(accepted)} accepted photos leaves none to "
                         f"train on")
    for e in entries:
        e.pop("holdout", None)
        if e["stem"] in chosen:
            e["holdout"] = True


@dataclass
class DatasetItem:
    image: Path
    caption: str
    mask: Path | None
    landmarks: list | None
    kind: str = "face"  # or the wider crop's kind (head_shoulders, half_body)


def read_dataset(dataset_dir: str | Path, holdout: bool = False) -> list[DatasetItem]:
    """The accepted items of a dataset directory (manifest order) that train, or with
    ``holdout`` the held-out photos (their face crops only), which never train.

    A folder without a manifest is read in the plain kohya way: every image with its
    same-stem .txt caption (missing caption: empty string); it holds nothing out.
    """
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise FileNotFoundError(f"dataset '{dataset_dir}' does not exist or is not a folder")
    manifest = read_manifest(dataset_dir)
    items = []
    if manifest is not None:
        for e in manifest["photos"]:
            if e["status"] != "accepted" or bool(e.get("holdout")) != holdout:
                continue
            caption = (dataset_dir / e["caption_file"]).read_text(encoding="utf-8").strip()
            items.append(DatasetItem(dataset_dir / e["image"], caption, dataset_dir / e["mask"],
                                     e.get("aligned_landmarks")))
            for c in ([] if holdout else e.get("crops", [])):
                text = (dataset_dir / c["caption_file"]).read_text(encoding="utf-8").strip()
                items.append(DatasetItem(dataset_dir / c["image"], text, dataset_dir / c["mask"], None, c["kind"]))
    elif not holdout:
        from .photos import PHOTO_EXTENSIONS

        for p in sorted(dataset_dir.iterdir()):
            if p.suffix.lower() in PHOTO_EXTENSIONS and p.is_file():
                txt = p.with_suffix(".txt")
                caption = txt.read_text(encoding="utf-8").strip() if txt.is_file() else ""
                mask = dataset_dir / "masks" / f"{p.stem}.png"
                items.append(DatasetItem(p, caption, mask if mask.is_file() else None, None))
    return items
