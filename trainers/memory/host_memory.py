"""Host memory a run needs to load its base model, checked before anything loads.

Loading is the run's peak in CPU memory: diffusers builds a folder's denoiser and VAE in fp32
and copies the file's weights in (a FLUX.1 transformer stored in bf16, 24 GB on disk, takes
48 GB while it loads), transformers keeps a folder's text encoders in their file's precision,
and an SD checkpoint's parts are built in fp32 as well; the families trained from ComfyUI's
separate files (FLUX.1, Z-Image, FLUX.2, Qwen-Image: ``Family.single_files_as_stored``) are
given those files' tensors as stored, a transformer file's 8-bit floats dequantized to bf16 and
a text encoder file's fp8 matrices kept at a byte each (its embedding tables, and the layers
``Family.text_quantize_skip`` names, as bf16: ``separate_files.load_text_model``). The frozen weights are cast
to the compute precision afterwards, and block streaming keeps them in CPU memory at that
precision, so the load is the largest figure. It is read from the files' headers (no tensor
is read) and compared with the memory the system reports available; a run that cannot load
is refused with both figures instead of being ended by the system's out-of-memory handling.

A family whose text encoders are dropped once the captions are encoded (FLUX.1, Z-Image,
FLUX.2, Qwen-Image: ``Family.keeps_text_encoders`` False) loads in two stages where the run
caches its captions (:func:`loads_in_stages`): the text encoders and the VAE first, every
caption encoded, the text encoders freed, and only then the denoiser. Its peak is then the VAE
plus the larger of the two, not their sum: for FLUX.2 dev from ComfyUI's fp8 files, about 71 GB
instead of about 97 GB (Mistral Small 3.1 24B as stored, then the 32 B transformer as bf16).

A run that quantizes its base to fp8 reads such a transformer file's fp8 matrix weights as
stored (:func:`reads_fp8_as_stored`, ``models/file_weights.py``): they count one byte each
(and a scale per row), so Qwen-Image's fp8 file loads in about 20 GB where its bf16 reading
took about 40 GB.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

_FLOAT = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}
_OTHER = {"I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
MARGIN = 1.10  # the loaders' transient copies of one tensor at a time, Python's own memory


# the names of a text model's embedding tables (no linear layer: read as bf16 even where stored in fp8)
_EMBEDDINGS = ("embed", "shared.")


@lru_cache(maxsize=64)
def _header(path: str, mtime_ns: int, size: int) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
    """``(key, dtype, shape)`` of every tensor of a .safetensors file (its header alone), read once
    per version of the file (``mtime_ns``, ``size``): a run's plan and checks ask several times."""
    from safetensors import safe_open

    tensors = []
    with safe_open(path, "pt") as f:
        for key in f.keys():
            part = f.get_slice(key)
            tensors.append((key, part.get_dtype(), tuple(part.get_shape())))
    return tuple(tensors)


def _tensors(path: Path):
    stat = path.stat()
    return _header(str(path), stat.st_mtime_ns, stat.st_size)


def _read_as_stored(key: str, dtype: str, shape: tuple[int, ...], skip: tuple[str, ...]) -> bool:
    """Whether a loader that reads fp8 as stored keeps this tensor in fp8: an e4m3 matrix weight
    of a layer whose name contains none of ``skip``."""
    return dtype == "F8_E4M3" and len(shape) == 2 and key.endswith(".weight") and not any(n in key for n in skip)


def _file_bytes(path: Path, keep_file_precision: bool, as_stored: tuple[str, ...] | None = None) -> int:
    """The bytes ``path``'s tensors take once read. ``as_stored``: its fp8 matrix weights are
    read as stored (one byte each and a scale per row), but those whose names contain one of it."""
    total = 0
    for key, dtype, shape in _tensors(path):
        n = math.prod(shape)
        if as_stored is not None and _read_as_stored(key, dtype, shape, as_stored):
            total += n + 4 * shape[0]  # as stored, with a float32 scale per row
        elif dtype in _FLOAT:  # kept: 8-bit floats are read as bf16
            total += n * (max(_FLOAT[dtype], 2) if keep_file_precision else 4)
        else:
            total += n * _OTHER.get(dtype, 4)
    return total


def text_encoder_files(cfg) -> dict[str, Path]:
    """``{encoder: file}`` of the text encoders a run reads from ComfyUI's separate files (a
    single transformer file as its base): the family's ``separate_files`` but the VAE, in its
    encoders' order (``text_encoder``, ``text_encoder_2``)."""
    from ...models.families import get_family

    if not Path(cfg.base_model).is_file():
        return {}
    fields = [n for n in get_family(cfg.family).separate_files if n != "vae"]
    files = {encoder: Path(getattr(cfg, name) or "") for encoder, name in zip(("text_encoder", "text_encoder_2"), fields)}
    return {encoder: f for encoder, f in files.items() if f.suffix == ".safetensors" and f.is_file()}


def text_weight_bytes(cfg) -> dict[str, int]:
    """``{encoder: bytes}`` of the weights each text encoder of :func:`text_encoder_files` holds on
    the device as read: its fp8 matrices at a byte each and a scale per row, everything else as
    :func:`_file_bytes` counts it (other 8-bit floats at two bytes), and its largest fp8 matrix
    once more at two (the fp8 layer's weight dequantized for one product). An upper bound:
    tensors the model does not read (a causal LM's head, a vision tower) count too."""
    from ...models.families import get_family

    skip = get_family(cfg.family).text_quantize_skip + _EMBEDDINGS
    out = {}
    for encoder, path in text_encoder_files(cfg).items():
        largest = max((math.prod(shape) for key, dtype, shape in _tensors(path)
                       if _read_as_stored(key, dtype, shape, skip)), default=0)
        out[encoder] = _file_bytes(path, True, skip) + 2 * largest
    return out


def loads_in_stages(cfg) -> bool:
    """Whether ``cfg``'s run frees the text encoders before its denoiser loads: a family that
    drops them once the captions are encoded, captions cached (not trained, not reshuffled each
    step), and no class images to generate first (prior preservation samples with both)."""
    from ...models.families import get_family

    return not get_family(cfg.family).keeps_text_encoders and cfg.caches_captions and not cfg.prior_preservation


def reads_fp8_as_stored(cfg, class_images_quantize: str | None = None) -> bool:
    """Whether ``cfg``'s run reads its transformer file's fp8 weights as stored, into Persona's
    fp8 layer: the base is a single transformer file (a family that reads those as stored),
    quantized to fp8 by the run anyway (``quantize_base: fp8``, LoRA), no training adapter is
    merged into its weights, and prior preservation's class images (the plan's
    ``class_images_quantize``) do not sample with an int8 or nf4 base instead."""
    from ...models.families import get_family

    return (cfg.quantize_base == "fp8" and cfg.method == "lora" and not cfg.training_adapter
            and get_family(cfg.family).single_files_as_stored and Path(cfg.base_model).is_file()
            and not (cfg.prior_preservation and class_images_quantize in ("int8", "nf4")))


def weight_files(cfg) -> list[tuple[Path, bool, str]]:
    """The safetensors files a run loads, each with whether it keeps its file precision while
    loading (a diffusers folder's text encoders) and its part: ``denoiser``, ``text`` or
    ``vae`` (the VAE and anything else, loaded in either stage)."""
    from ...models.families import get_family

    family = get_family(cfg.family)
    base = Path(cfg.base_model)
    if base.is_dir():
        files = []
        for f in sorted(base.rglob("*.safetensors")):
            folder = f.relative_to(base).parts[0]
            part = "text" if folder.startswith("text_encoder") else "denoiser" if folder == family.denoiser_folder \
                else "vae"
            files.append((f, part == "text", part))
        return files
    kept = family.single_files_as_stored
    files = [(base, kept, "denoiser")] if base.is_file() else []
    for name in family.separate_files:
        value = getattr(cfg, name, None)
        if value and Path(value).is_file():
            files.append((Path(value), kept, "vae" if name == "vae" else "text"))
    return files


def load_bytes(cfg, keep_fp8: bool = False) -> int:
    """Bytes of CPU memory loading ``cfg``'s base model takes at its peak (see the module's
    text): every part at once, or for a run that loads in stages the VAE with the larger of
    the text encoders and the denoiser. ``keep_fp8``: the denoiser's fp8 weights are read as
    stored (:func:`reads_fp8_as_stored`); a text encoder's separate file's always are
    (``models/families/separate_files.load_text_model``)."""
    from ...models.families import get_family

    family = get_family(cfg.family)
    as_stored = {"denoiser": family.quantize_skip if keep_fp8 else None, "vae": None,
                 "text": None if Path(cfg.base_model).is_dir() else family.text_quantize_skip + _EMBEDDINGS}
    parts = {"denoiser": 0, "text": 0, "vae": 0}
    for f, keep, part in weight_files(cfg):
        if f.suffix == ".safetensors":
            parts[part] += _file_bytes(f, keep, as_stored[part])
    if loads_in_stages(cfg):
        return int((parts["vae"] + max(parts["text"], parts["denoiser"])) * MARGIN)
    return int(sum(parts.values()) * MARGIN)


def available_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def check_host_memory(cfg, available: int | None = None, processes: int = 1, keep_fp8: bool = False) -> int:
    """Refuse ``cfg`` (a ``ConfigError`` naming ``base_model``) when loading its base model in
    each of ``processes`` processes on this machine needs more CPU memory than is available;
    returns the bytes they need. ``keep_fp8``: see :func:`load_bytes`."""
    need = load_bytes(cfg, keep_fp8) * processes
    have = available_bytes() if available is None else available
    if need > have:
        raise type(cfg).field_error(
            "base_model", f"loading '{Path(cfg.base_model).name}'"
                          + (f" in {processes} processes" if processes > 1 else "") + f" needs about {need / 2 ** 30:.1f} GB of CPU memory "
                          f"(its weights as the loaders build them, before they are cast to the compute precision) "
                          f"and {have / 2 ** 30:.1f} GB is available: close other programs (ComfyUI's own loaded "
                          f"models included), add memory or swap, "
                          + _as_stored_hint(cfg, keep_fp8, processes, have) + "or use a smaller base model")
    return need


def as_stored_load_bytes(cfg, processes: int = 1) -> int | None:
    """What loading ``cfg``'s base would take in each of ``processes`` processes with
    ``quantize_base: fp8``, the transformer file's fp8 weights read as stored; None where such a
    run would not read them so (:func:`reads_fp8_as_stored`)."""
    as_fp8 = cfg.model_copy(update={"quantize_base": "fp8"})
    return load_bytes(as_fp8, keep_fp8=True) * processes if reads_fp8_as_stored(as_fp8) else None


def _as_stored_hint(cfg, keep_fp8: bool, processes: int, have: int) -> str:
    """What the refusal suggests where ``quantize_base: fp8`` would read the file's fp8 weights as
    stored and then load."""
    need = None if keep_fp8 else as_stored_load_bytes(cfg, processes)
    if need is None or need >= load_bytes(cfg) * processes or need > have:
        return ""
    return (f"set quantize_base 'fp8' (the file's fp8 weights read as stored: about {need / 2 ** 30:.1f} GB; "
            f"memory 'auto' plans so by itself), ")
