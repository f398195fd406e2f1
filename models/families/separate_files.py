"""The parts of a base model that ComfyUI keeps as separate files (``models/text_encoders``,
``models/vae``), read into the transformers and diffusers classes the families use. Shared by
every family whose single-file base needs them (FLUX, Z-Image)."""
from __future__ import annotations

from pathlib import Path

from ...core.deps import require


def require_companions(path, title: str, **files) -> None:
    """Refuse a single transformer file given without the files it is read with, naming them."""
    missing = [name for name, value in files.items() if not value]
    if missing:
        raise ValueError(f"base_model: '{path}' is a single {title} transformer file; also give {', '.join(missing)}")


def load_text_model(cls, config_cls, config: Path, file: str | Path, overrides: dict | None = None,
                    unread: tuple[str, ...] = (), fp8_skip: tuple[str, ...] = ()):
    """A text encoder from one file in transformers' layout (what ComfyUI's clip_l.safetensors,
    t5xxl_*.safetensors and qwen_3_4b.safetensors hold), prefix ``text_model.`` or ``model.``
    optional (a causal LM's file: its ``lm_head`` is not read); ``overrides`` change the
    shipped config (another width of the same model); ``unread`` names weights a file may
    leave out because nothing reads them (made as ones; the caller removes their module).

    The file's fp8 weights are read as stored (one byte each, ``models/fp8_linear.py``): every
    linear layer of one becomes Persona's fp8 layer, but those whose names contain one of
    ``fp8_skip`` (model code that casts its input to the layer's weight dtype), which are read
    as bf16 with the embeddings. No family that reads its text encoders from such files trains
    them, so nothing is lost: a 24B Mistral file in fp8 loads in about 24 GB, not 48."""
    import torch

    from ..file_weights import read_weights
    from ..fp8_linear import SCALE_SUFFIX, dequantize_stored, install_stored_fp8

    tensors = read_weights(file, keep_fp8=True)
    conf = config_cls.from_pretrained(config)
    conf.update(overrides or {})
    with torch.device("meta"):
        model = cls(conf)
    own = model.state_dict().keys()
    for prefix in ("text_model.", "model."):  # classic "text_model." names, a causal LM's "model."
        if not any(k in own for k in tensors):
            tensors = {k.removeprefix(prefix): v for k, v in tensors.items()}
    for a, b in (("shared", "encoder.embed_tokens"), ("encoder.embed_tokens", "shared")):  # T5's one embedding
        if f"{a}.weight" in tensors and f"{b}.weight" in own and f"{b}.weight" not in tensors:
            if f"{a}{SCALE_SUFFIX}" in tensors:  # an embedding: read as bf16, once for both names
                tensors[f"{a}.weight"] = dequantize_stored(tensors[f"{a}.weight"], tensors.pop(f"{a}{SCALE_SUFFIX}"))
            tensors[f"{b}.weight"] = tensors[f"{a}.weight"]
    tensors = {k: v for k, v in tensors.items()
               if k in own or (k.endswith(SCALE_SUFFIX) and k[:-len(SCALE_SUFFIX)] + ".weight" in own)}
    tensors = install_stored_fp8(model, tensors, fp8_skip)
    own = model.state_dict().keys()
    for name in unread:
        if name in own and name not in tensors:
            tensors[name] = torch.ones(model.state_dict()[name].shape)
    missing = [k for k in own if k not in tensors and not k.endswith("position_ids")]
    if missing:
        raise ValueError(f"'{file}' does not fit {cls.__name__} ({config.name}): missing {missing[:3]}")
    model.load_state_dict(tensors, strict=False, assign=True)
    for module in model.modules():  # what no file holds, made as the model makes it: position ids, rotary
        for name, buf in list(module._buffers.items()):  # frequencies
            if buf is None or not buf.is_meta:
                continue
            if name == "position_ids":
                module._buffers[name] = torch.arange(buf.shape[-1]).expand(buf.shape).clone()
            elif name.endswith("inv_freq") and hasattr(module, "config"):
                with torch.device("cpu"):
                    module._buffers[name] = type(module)(config=module.config)._buffers[name]
            else:
                raise ValueError(f"'{file}' does not fit {cls.__name__} ({config.name}): no '{name}'")
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:
        raise ValueError(f"'{file}' does not fit {cls.__name__} ({config.name}): missing {leftover[:3]}")
    return model


def load_vae(config: Path, file: str | Path):
    """The VAE from one file in the original (``ae.safetensors``) or diffusers' layout."""
    diffusers = require("diffusers", "Loading a VAE file")
    import torch

    from ..file_weights import loadable_file, read_weights

    tensors = read_weights(file)
    if any(k.startswith(("encoder.down.", "first_stage_model.")) for k in tensors):  # original layout
        return diffusers.AutoencoderKL.from_single_file(str(loadable_file(file)), config=str(config.parent),
                                                        subfolder="vae", local_files_only=True)
    with torch.device("meta"):
        model = diffusers.AutoencoderKL.from_config(diffusers.AutoencoderKL.load_config(config))
    model.load_state_dict(tensors, strict=True, assign=True)
    return model


def model_config(folder: Path) -> dict:
    """A shipped diffusers ``config.json`` as constructor arguments (its ``_`` entries left out)."""
    import json

    return {k: v for k, v in json.loads((Path(folder) / "config.json").read_text()).items() if not k.startswith("_")}


def transformer_loader(load, path: Path, config: Path):
    """A single transformer file's deferred read (``Components.denoiser_loader``):
    ``load(path, config, keep_fp8=...)`` when the denoiser is needed. It can keep the file's fp8
    weights as stored (``Components.load_denoiser``)."""
    from functools import partial

    loader = partial(load, path, config)
    loader.keeps_fp8 = True
    return loader


def build_on_meta(cls, config: dict, tensors: dict, path, what: str, field: str = "base_model",
                  keep_fp8: tuple[str, ...] | None = None):
    """``cls(**config)`` built on the meta device and given ``tensors`` (no copy); a file
    whose weights do not fit is refused with what is missing or left over, under the config
    ``field`` that named it. ``keep_fp8`` (tensors read so): the linear layers of fp8 weights
    become Persona's fp8 layer, but those whose names contain one of it
    (``models/fp8_linear.install_stored_fp8``)."""
    import torch

    with torch.device("meta"):
        model = cls(**config)
    if keep_fp8 is not None:
        from ..fp8_linear import install_stored_fp8

        tensors = install_stored_fp8(model, tensors, keep_fp8)
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"{field}: '{path}' does not fit the {what}: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    return model


def strip_prefix(tensors: dict) -> dict:
    """A denoiser file's tensors without the prefix every key shares (``model.diffusion_model.``
    in checkpoints and ComfyUI's files, ``diffusion_model.``, ``transformer.``)."""
    for prefix in ("model.diffusion_model.", "diffusion_model.", "transformer."):
        if tensors and all(k.startswith(prefix) for k in tensors):
            return {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors
