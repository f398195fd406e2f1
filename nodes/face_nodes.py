"""Face stage nodes: Load Photos, Face Align, Build Dataset (thin adapters over faces/)."""
from __future__ import annotations

import json


from ..faces.config import PrepareConfig
from ..core.imaging import grid, images_to_tensor, masks_to_tensor, tensor_to_images
from ..core.tables import text_table
from .host import Progress, confined_path, input_dir, models_dir, output_dir, safe_name
from .widgets import config_from_widgets, widgets

CATEGORY = "Persona/faces"

_ALIGN_FIELDS = ["subject", "resolution", "face_margin", "align_mode", "border",
                 "multiple_faces", "min_confidence", "min_face_px", "min_sharpness",
                 "max_yaw_deg", "white_balance", "clahe", "contrast", "denoise"]
_DATASET_FIELDS = _ALIGN_FIELDS + ["token", "class_noun", "caption_template",
                                   "use_existing_captions", "auto_caption"]


class PersonaLoadPhotos:
    """A folder of photos as a list of images (each at its own size) and their names."""

    CATEGORY = CATEGORY
    FUNCTION = "execute"
    RETURN_TYPES = ("IMAGE", "STRING", "STRING")
    RETURN_NAMES = ("images", "names", "report")
    OUTPUT_IS_LIST = (True, True, False)
    OUTPUT_TOOLTIPS = ("One image per readable photo (EXIF orientation applied).",
                       "The file name of each image.",
                       "Which files were skipped and why.")
    DESCRIPTION = "Load every photo of a folder; unreadable files are reported, never fatal."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "folder": ("STRING", {"default": "persona/photos", "tooltip":
                                  "Folder of photos; a relative path is inside ComfyUI's input folder."}),
            "max_side": ("INT", {"default": 2048, "min": 64, "max": 16384, "step": 64, "tooltip":
                                 "Photos larger than this are reduced (longer side) when loaded."}),
        }}

    def execute(self, folder, max_side):
        from ..faces.photos import load_folder

        path = confined_path(folder, "folder", input_dir())
        photos, errors = load_folder(path, max_side=max_side)
        if not photos:
            detail = "; ".join(str(e) for e in errors) or "the folder has no photo files"
            raise ValueError(f"folder '{path}': no readable photo ({detail})")
        report = {"folder": str(path), "loaded": [p.path for p in photos],
                  "skipped": [{"file": e.path, "reason": e.reason, "detail": e.detail}
                              for e in errors]}
        images = [images_to_tensor([p.pixels]) for p in photos]
        names = [p.path.rsplit("/", 1)[-1] for p in photos]
        return (images, names, json.dumps(report, indent=2))


class PersonaFaceAlign:
    """Detect (MTCNN), align to the face template, filter by quality, preprocess."""

    CATEGORY = CATEGORY
    FUNCTION = "execute"
    INPUT_IS_LIST = True
    RETURN_TYPES = ("IMAGE", "MASK", "STRING")
    RETURN_NAMES = ("aligned", "face_mask", "report")
    OUTPUT_TOOLTIPS = ("Aligned photos that passed the quality filter, one batch.",
                       "Feathered face mask of each aligned photo.",
                       "Per photo: accepted or the reason it was rejected, with its scores.")
    DESCRIPTION = "Face alignment and quality filtering, as in dataset preparation."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "Photos: a batch, or the list from Persona Load Photos."}),
            **widgets(PrepareConfig, _ALIGN_FIELDS),
        }}

    def execute(self, images, **values):
        from ..faces.pipeline import align_images

        cfg = config_from_widgets(PrepareConfig, {k: v[0] for k, v in values.items()})
        pixels = [im for batch in images for im in tensor_to_images(batch)]
        results = align_images(pixels, cfg)
        rows = [(i, "accepted" if r.accepted else "rejected", r.reason or "",
                 json.dumps(r.scores)) for i, r in enumerate(results)]
        report = text_table(["#", "status", "reason", "scores"], rows)
        kept = [r for r in results if r.accepted]
        if not kept:
            raise ValueError("images: no photo passed the face filter:\n" + report)
        return (images_to_tensor([r.image for r in kept]), masks_to_tensor([r.mask for r in kept]),
                report)


class PersonaBuildDataset:
    """Photos folder -> dataset folder (aligned images, captions, masks, manifest)."""

    CATEGORY = CATEGORY
    FUNCTION = "execute"
    RETURN_TYPES = ("PERSONA_DATASET", "IMAGE", "STRING")
    RETURN_NAMES = ("dataset", "preview", "report")
    OUTPUT_TOOLTIPS = ("The dataset, for Persona Train.",
                       "A contact sheet of the accepted images.",
                       "Every photo: accepted with its caption, or rejected and why.")
    OUTPUT_NODE = True
    DESCRIPTION = "Build (or update) a training dataset; re-runs only process new or changed photos."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "photos_folder": ("STRING", {"default": "persona/photos", "tooltip":
                                         "Folder of photos; a relative path is inside ComfyUI's input folder."}),
            "dataset_name": ("STRING", {"default": "subject", "tooltip":
                                        "Written to output/persona/datasets/<name>."}),
            **widgets(PrepareConfig, _DATASET_FIELDS),
        }, "optional": {
            "consent_file": ("STRING", {"default": "", "tooltip":
                                        "The subject's consent record (YAML/JSON: subject, consented_by, date, uses, "
                                        "document), inside ComfyUI's input folder; kept in the dataset's manifest."}),
            **widgets(PrepareConfig, ["wider_crops"]),
            "holdout": ("INT", {"default": 0, "min": 0, "max": 100, "tooltip": "Photos held out of training (the "
                                "last N accepted by name) to measure identity on photos the LoRA never saw."}),
            "caption_model": ("STRING", {"default": "", "tooltip": PrepareConfig.model_fields["caption_model"].description
                                         + " A folder inside ComfyUI's models folder, e.g. LLM/Florence-2-base."}),
        }}

    def execute(self, photos_folder, dataset_name, consent_file="", caption_model="", **values):
        from ..faces.consent import read_consent
        from ..faces.dataset import prepare_dataset, read_manifest

        if caption_model.strip():
            values["caption_model"] = str(confined_path(caption_model, "caption_model", models_dir()))
        cfg = config_from_widgets(PrepareConfig, values)
        name = safe_name(dataset_name, "dataset_name")
        src = confined_path(photos_folder, "photos_folder", input_dir())
        consent = read_consent(confined_path(consent_file, "consent_file", input_dir())) \
            if consent_file.strip() else None
        dst = output_dir() / "persona" / "datasets" / name
        bar = Progress(1)
        result = prepare_dataset(src, dst, cfg, progress=lambda i, n, _f: bar.update(i, n), consent=consent)
        if not result.accepted:
            raise ValueError(f"photos_folder '{src}': no photo passed the filter:\n"
                             + text_table(["photo", "status", "reason"], result.summary_rows()))
        from PIL import Image
        import numpy as np

        thumbs = [np.asarray(Image.open(dst / e["image"]).convert("RGB")) for e in result.accepted]
        dataset = {"path": str(dst), "token": cfg.token, "class_noun": cfg.class_noun,
                   "resolution": cfg.resolution, "accepted": len(result.accepted),
                   "rejected": len(result.rejected), "consent": bool(consent or (read_manifest(dst) or {}).get("consent"))}
        report = text_table(["photo", "status", "caption or reason"], result.summary_rows())
        preview = images_to_tensor([grid(thumbs)])
        return {"ui": {"text": [report]}, "result": (dataset, preview, report)}


NODES = {
    "PersonaLoadPhotos": (PersonaLoadPhotos, "Persona Load Photos"),
    "PersonaFaceAlign": (PersonaFaceAlign, "Persona Face Align"),
    "PersonaBuildDataset": (PersonaBuildDataset, "Persona Build Dataset"),
}
