"""Persona Save Image: ComfyUI's SaveImage with provenance (a thin adapter over
``provenance.save``): the invisible watermark, Persona's record (LoRA hash, seed, the gate's
and the metrics' summary) in the file's metadata, and C2PA content credentials when the
server's operator configured a signing certificate."""
from __future__ import annotations

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
        from ..provenance.save import save_numbered

        subfolder, prefix = _prefix(filename_prefix)
        lora = lora_info(lora_file_path(lora_file)) if lora_file.strip() else {}
        record = Record.from_graph(gate, (metrics or {}).get("rows"), lora)
        cfg = ProvenanceConfig.from_env(**({} if watermark else {"watermark": False}))
        written = save_numbered(tensor_to_images(images), output_dir() / subfolder, prefix, f".{format}", record, cfg)
        lines = []
        for name, data in written:
            wm, cred = data["watermark"], data["content_credentials"]
            lines.append(f"{name}: watermark {'embedded' if wm['embedded'] else 'NOT embedded (' + wm['reason'] + ')'}; "
                         f"content credentials {'signed' if cred['signed'] else 'not signed (' + cred['reason'] + ')'}")
        return {"ui": {"images": [{"filename": n, "subfolder": subfolder, "type": "output"} for n, _ in written],
                       "text": ["\n".join(lines)]}}


NODES = {"PersonaSaveImage": (PersonaSaveImage, "Persona Save Image (watermark + credentials)")}
