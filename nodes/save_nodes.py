"""Persona Save Image: ComfyUI's SaveImage with provenance (a thin adapter over
``provenance.save``): the invisible watermark, Persona's record (LoRA hash, seed, the gate's
and the metrics' summary) in the file's metadata, and C2PA content credentials when the
server's operator configured a signing certificate."""
from __future__ import annotations

import json

from ..core.imaging import tensor_to_images
from .host import lora_file_path, output_dir, safe_name

CATEGORY = "Persona/generate"


def _prefix(value: str) -> tuple[str, str]:
    """'folder/prefix' or 'prefix' -> (subfolder, prefix), each a plain name."""
    parts = [p for p in str(value).strip().split("/")]
    if len(parts) > 2:
        raise ValueError(f"filename_prefix: at most one folder, 'folder/prefix', got {value!r}")
    names = [safe_name(p, "filename_prefix") for p in parts]
    return (names[0], names[1]) if len(names) == 2 else ("", names[0])


def _next_index(folder, prefix: str, suffix: str) -> int:
    taken = [int(p.stem.rsplit("_", 1)[1]) for p in folder.glob(f"{prefix}_*{suffix}")
             if p.stem.rsplit("_", 1)[1].isdigit()]
    return max(taken, default=0) + 1


class PersonaSaveImage:
    CATEGORY = CATEGORY
    FUNCTION = "execute"
    OUTPUT_NODE = True
    RETURN_TYPES = ()
    DESCRIPTION = ("Save images with their provenance: an invisible watermark (pack id, LoRA hash, seed), "
                   "Persona's record in the file (gate and metrics summary), and C2PA content credentials "
                   "when PERSONA_C2PA_CERT / PERSONA_C2PA_KEY are set on the server. Check a file with "
                   "persona verify.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "The images to save."}),
            "filename_prefix": ("STRING", {"default": "persona/generated", "tooltip":
                                           "'folder/prefix' inside ComfyUI's output folder (plain names)."}),
            "format": (["png", "jpg"], {"tooltip": "PNG (record in a text chunk), or JPEG (in its comment)."}),
            "watermark": ("BOOLEAN", {"default": True, "tooltip":
                                      "Embed the invisible watermark; when off, each file's record says so."}),
            "lora_file": ("STRING", {"default": "", "tooltip":
                                     "The LoRA the images were made with (its name under models/loras, or Persona "
                                     "Train LoRA's lora_file): its hash goes into the watermark and the record."}),
        }, "optional": {
            "gate": ("STRING", {"forceInput": True, "tooltip": "The gated sampler's scores (seed, result)."}),
            "metrics": ("PERSONA_METRICS", {"tooltip": "A Metrics Panel's result, summarised in the record."}),
        }}

    def execute(self, images, filename_prefix, format, watermark, lora_file, gate=None, metrics=None):
        from ..provenance.record import ProvenanceConfig, Record, lora_info
        from ..provenance.save import save_image

        subfolder, prefix = _prefix(filename_prefix)
        gate_result = json.loads(gate) if gate else None
        seed = None
        if gate_result:
            seed = gate_result["attempts"][gate_result["best_attempt"] - 1]["params"].get("seed")
        summary = [{"metric": r["metric"], "value": r["value"]} for r in (metrics or {}).get("rows", [])
                   if r["value"] is not None][:12] or None
        lora = lora_info(lora_file_path(lora_file)) if lora_file.strip() else {}
        record = Record(lora=lora, seed=seed, gate=gate_result, metrics=summary)
        cfg = ProvenanceConfig.from_env(**({} if watermark else {"watermark": False}))
        folder = output_dir() / subfolder
        folder.mkdir(parents=True, exist_ok=True)
        suffix = f".{format}"
        start = _next_index(folder, prefix, suffix)
        saved, lines = [], []
        for k, image in enumerate(tensor_to_images(images)):
            name = f"{prefix}_{start + k:05d}{suffix}"
            written = save_image(image, folder / name, record, cfg)
            saved.append({"filename": name, "subfolder": subfolder, "type": "output"})
            wm, cred = written["watermark"], written["content_credentials"]
            lines.append(f"{name}: watermark {'embedded' if wm['embedded'] else 'NOT embedded (' + wm['reason'] + ')'}; "
                         f"content credentials {'signed' if cred['signed'] else 'not signed (' + cred['reason'] + ')'}")
        return {"ui": {"images": saved, "text": ["\n".join(lines)]}}


NODES = {"PersonaSaveImage": (PersonaSaveImage, "Persona Save Image (watermark + credentials)")}
