"""Reading the weights of the model files ComfyUI users have: bf16/fp16 files as they are, and
8-bit float files dequantized.

ComfyUI's examples link fp8 files (``flux1-dev-fp8``, ``t5xxl_fp8_e4m3fn``, fp8 SDXL
checkpoints), stored in one of three ways:

- **plain fp8**: each weight in ``float8_e4m3fn`` or ``float8_e5m2``, nothing else;
- **scaled fp8** (ComfyUI's older layout, ``..._scaled.safetensors``): a ``scaled_fp8`` marker
  tensor, and beside each quantized ``<layer>.weight`` its per-tensor ``<layer>.scale_weight``
  (the weight is ``fp8 value x scale``) and perhaps an input scale ``<layer>.scale_input``;
- **quantization metadata** (ComfyUI's newer layout): ``<layer>.weight_scale`` (and
  ``input_scale``) with the layer's format in ``<layer>.comfy_quant`` (JSON bytes) or in the
  file's ``_quantization_metadata``. Persona reads its ``float8_e4m3fn`` / ``float8_e5m2``
  per-tensor form; block-scaled formats (``nvfp4``, ``mxfp8``) are refused with the layer named.

Each quantized weight is dequantized (``value x scale``) into bf16 as it is read; input scales,
which only ComfyUI's fp8 matrix products use, are dropped. The frozen base is then cast and,
where the plan says so, quantized again by Persona's own fp8 layer (``quantize_base``), so
a run from an fp8 file needs no more device memory than one from a bf16 file.

A run that quantizes its base to fp8 anyway reads a transformer file's ``float8_e4m3fn``
matrix weights as stored instead (``keep_fp8``): each ``<layer>.weight`` stays in fp8 with its
scale beside it as ``<layer>.scale`` (one per row, the file's per-tensor scale repeated; 1 for a
plain fp8 file), and the loader builds Persona's fp8 layer from them
(``models/fp8_linear.install_stored_fp8``). The base then takes its fp8 size in CPU memory
while it loads, not its bf16 size (Qwen-Image's 20 B transformer: about 20 GB instead of 40),
and trains with exactly the file's values, not a second rounding of them. A layout converter
(BFL's or the original layout's names) is applied by :func:`convert_keeping_fp8`, which moves
each scale with its rows.

Loaders that read a path themselves (diffusers' ``from_single_file`` for SD1.5/SDXL
checkpoints) get :func:`loadable_file`: the file itself, or a dequantized copy written once in
the Persona cache, named by the file's content (the user's file is never changed).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from .fp8_linear import FP8 as KEPT_FP8, SCALE_SUFFIX, dequantize_stored

log = logging.getLogger(__name__)

FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)
_FP8_NAMES = ("F8_E4M3", "F8_E5M2")
_READABLE = {"float8_e4m3fn", "float8_e5m2"}
_SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
_DROPPED = (".scale_input", ".input_scale", ".comfy_quant")
DEQUANTIZED_DTYPE = torch.bfloat16


def needs_dequantizing(path: str | Path) -> bool:
    """Whether ``path`` holds 8-bit float weights or ComfyUI's scale tensors (read from its
    header only)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        if (f.metadata() or {}).get("_quantization_metadata"):
            return True
        for key in f.keys():
            if key.endswith(("scaled_fp8", *_SCALE_SUFFIXES)) or f.get_slice(key).get_dtype() in _FP8_NAMES:
                return True
    return False


def _is_dropped(key: str) -> bool:
    return key.endswith(("scaled_fp8", *_SCALE_SUFFIXES, *_DROPPED, ".weight_scale_2"))


def _dequantized(keys, get, source: str, metadata: dict, dtype: torch.dtype, keep_fp8: bool = False):
    """``(key, tensor)`` for every kept key, each tensor fetched by ``get`` only when its turn
    comes and dequantized before the next is fetched. A scaled weight is copied into ``dtype``
    and scaled in place there: no float32 temporaries (which fragmented the heap: reading a
    128 MB fp8 file peaked anywhere from 396 to 835 MB), and the tensor ``get`` gave (a caller's,
    or a read-only view of a mapped file, whatever its dtype) is never written. ``keep_fp8``:
    ``float8_e4m3fn`` matrix weights as stored, each followed by its ``<layer>.scale`` column."""
    keys = list(keys)
    formats = {}
    raw = (metadata or {}).get("_quantization_metadata")
    if raw:
        formats.update({k: v.get("format", "") for k, v in json.loads(raw).get("layers", {}).items()})
    scales = {}
    for key in keys:
        if key.endswith(".comfy_quant"):
            formats[key[:-len(".comfy_quant")]] = json.loads(bytes(get(key).tolist()).decode("utf-8")).get("format", "")
        for suffix in _SCALE_SUFFIXES:
            if key.endswith(suffix):
                scales[key[:-len(suffix)]] = get(key)
    names = set(keys)
    for key in keys:
        if _is_dropped(key):
            continue
        value = get(key)
        layer = key[:-len(".weight")] if key.endswith(".weight") else None
        if keep_fp8 and layer is not None and value.dtype == KEPT_FP8 and value.ndim == 2 \
                and formats.get(layer, "float8_e4m3fn") == "float8_e4m3fn" and layer + SCALE_SUFFIX not in names:
            scale = scales.get(layer)
            if scale is None or scale.numel() == 1:
                yield key, value
                yield layer + SCALE_SUFFIX, torch.full((value.shape[0], 1), 1.0 if scale is None else float(scale))
                continue
        if layer is not None and layer in scales:
            fmt = formats.get(layer, "float8_e4m3fn")
            scale = scales[layer]
            if fmt not in _READABLE or scale.numel() != 1:
                raise ValueError(f"'{source}': layer '{layer}' is stored as {fmt or 'an unknown format'}"
                                 f"{' with block scales' if scale.numel() != 1 else ''}, which Persona cannot "
                                 f"train from; use the model's bf16, fp16 or fp8 (per-tensor scaled) file")
            value = value.to(dtype, copy=True).mul_(float(scale))  # fp8 -> bf16 is exact; the product is rounded once
        elif value.dtype in FP8:
            value = value.to(dtype)
        yield key, value


def dequantize(tensors: dict[str, torch.Tensor], source: str, metadata: dict | None = None,
               dtype: torch.dtype = DEQUANTIZED_DTYPE) -> dict[str, torch.Tensor]:
    """``tensors`` with every 8-bit float weight dequantized into ``dtype`` and ComfyUI's scale
    and marker tensors removed (see the module's text); ``source`` names the file in errors."""
    return dict(_dequantized(tensors.keys(), tensors.__getitem__, source, metadata or {}, dtype))


def read_weights(path: str | Path, keep_fp8: bool = False) -> dict[str, torch.Tensor]:
    """Every tensor of a .safetensors file, 8-bit float weights dequantized into bf16 (a file
    without any comes back as it is). The file is read one tensor at a time, each dequantized
    before the next is read: reading an fp8 file takes its bf16 size in memory (what the
    host-memory check counts) besides the mapped file. ``keep_fp8``: ``float8_e4m3fn`` matrix
    weights as stored, with their ``<layer>.scale`` columns (see the module's text)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return dict(_dequantized(f.keys(), f.get_tensor, Path(path).name, f.metadata() or {}, DEQUANTIZED_DTYPE,
                                 keep_fp8))


def _kept_scales(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """``{scale key: weight key}`` of the weights read as stored (fp8 with a scale column)."""
    pairs = {}
    for key in tensors:
        if key.endswith(SCALE_SUFFIX):
            weight = key[:-len(SCALE_SUFFIX)] + ".weight"
            if weight in tensors and tensors[weight].dtype == KEPT_FP8:
                pairs[key] = weight
    return pairs


def dequantize_kept(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` read with ``keep_fp8`` as :func:`read_weights` would have read them without."""
    pairs = _kept_scales(tensors)
    out = {k: v for k, v in tensors.items() if k not in pairs}
    for scale, weight in pairs.items():
        out[weight] = dequantize_stored(tensors[weight], tensors[scale], DEQUANTIZED_DTYPE)
    return out


def convert_keeping_fp8(convert, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``convert`` (a layout converter: renames, and splits or joins along the rows) applied to
    ``tensors`` read with ``keep_fp8``, each kept weight's scale column moved with its rows: the
    converter runs once on the weights and once with each kept weight replaced by its column,
    and a converted fp8 weight takes the converted column of its name. A converter that does
    anything else to a weight (reshapes it, computes with it) is run on the dequantized
    tensors instead, as without ``keep_fp8``."""
    pairs = _kept_scales(tensors)
    if not pairs:
        return convert(tensors)
    weights = {k: v for k, v in tensors.items() if k not in pairs}
    columns = dict(weights)
    for scale, weight in pairs.items():
        columns[weight] = tensors[scale]
    try:
        out = convert(weights)
        moved = convert(columns)
        for key, value in list(out.items()):
            column = moved.get(key)
            if value.dtype != KEPT_FP8:  # not made from a kept weight (one cast by the converter would be)
                if column is None or column.shape != value.shape:
                    raise ValueError(f"'{key}' is not converted row by row")
            elif not key.endswith(".weight") or column is None or tuple(column.shape) != (value.shape[0], 1):
                raise ValueError(f"'{key}' is not converted row by row")
            else:
                out[key[:-len(".weight")] + SCALE_SUFFIX] = column
        return out
    except (RuntimeError, ValueError, TypeError, IndexError) as e:  # not a row-wise layout change
        log.info("fp8 weights read dequantized: the layout conversion is not row by row (%s)", e)
        return convert(dequantize_kept(tensors))


def loadable_file(path: str | Path) -> Path:
    """``path`` itself, or (8-bit float weights) a dequantized copy in the Persona cache, written
    once per file content: for loaders that read a path."""
    from safetensors.torch import save_file

    from ..core.paths import cache_root
    from .components import file_hash

    path = Path(path)
    if not needs_dequantizing(path):
        return path
    target = cache_root() / "dequantized" / f"{file_hash(path)}-{path.stem[:60]}.safetensors"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in read_weights(path).items()}, str(tmp))
        tmp.replace(target)
    return target
