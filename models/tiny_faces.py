"""The demo's default model: the tiny SD1.x architecture with shipped weights that draw faces.

A tiny model with random weights decodes noise, so a generation from it has no face for the
identity gate, the enhancement steps or any identity metric. The weights in
``models/weights/tiny_faces`` (about 5 MB, fp16) were trained by
``scripts/train_tiny_faces.py`` from photos that ship in installed packages, at 64 px:

- the **VAE** reconstructs images (crops of scikit-image's photos and the aligned faces);
- the **UNet** draws the aligned faces of the two sample people, scikit-image's astronaut and
  matplotlib's Grace Hopper, for ``a photo of a person`` (a face prior of two people); a LoRA
  trained on one of them teaches it which one ``sks person`` is;
- the **text encoder** is the random tiny CLIP the UNet was trained with, shipped so that the
  pair stays matched whatever a future library does to random initialisation.

It shows that every stage runs on real signal, not quality: it knows two faces at 64 px.
``vae_flux.safetensors`` is the 16-channel tiny FLUX VAE trained the same way, for the FLUX
and Z-Image memorisation tests, ``vae_flux2.safetensors`` FLUX.2's 32-channel one and
``vae_qwen_image.safetensors`` Qwen-Image's video VAE (``install_face_vae``).
``tiny_faces.json`` beside the weights records how they were made.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

WEIGHTS = Path(__file__).resolve().parent / "weights" / "tiny_faces"
RESOLUTION = 64  # px, what it was trained at and samples best at
CAPTION = "a photo of a person"
_PARTS = {"unet": "unet.safetensors", "vae": "vae.safetensors", "text_encoder": "text_encoder.safetensors"}
# the shipped face VAEs' geometry: two blocks, a 64 px image is a 32x32 latent
FACE_VAE = {"block_out_channels": [16, 32], "down_block_types": ["DownEncoderBlock2D"] * 2,
            "up_block_types": ["UpDecoderBlock2D"] * 2}
_FILES = {"unet": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.safetensors",
          "text_encoder": "model.safetensors"}


def info() -> dict:
    """What ``tiny_faces.json`` records (the training data, steps, losses, scaling factor)."""
    path = WEIGHTS / "tiny_faces.json"
    if not path.is_file():
        raise FileNotFoundError(f"tiny face model: '{path}' is missing; run scripts/train_tiny_faces.py")
    return json.loads(path.read_text())


def save_weights(folder: Path, unet, vae, text_encoder, meta: dict) -> None:
    """Write the three models' weights (fp16) and ``meta`` to ``folder``."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    for name, module in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
        tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in module.state_dict().items()}
        if name == "text_encoder":  # the classic key prefix, as models.build writes CLIP
            tensors = {(k if k.startswith("text_model.") else f"text_model.{k}"): v for k, v in tensors.items()}
        save_file(tensors, str(folder / _PARTS[name]), metadata={"format": "pt"})
    (folder / "tiny_faces.json").write_text(json.dumps(meta, indent=2) + "\n")


# Qwen-Image's video VAE in the same geometry (one 2x step, no temporal one)
QWEN_FACE_VAE = {"base_dim": 16, "dim_mult": [1, 2], "num_res_blocks": 1, "attn_scales": [],
                 "temperal_downsample": [False]}
# the shipped face VAEs by kind (latent channels, or the VAE class when it is not an
# AutoencoderKL): (weights file, its record in tiny_faces.json, what trains it, its geometry)
_FACE_VAES = {4: ("vae.safetensors", None, "scripts/train_tiny_faces.py", FACE_VAE),
              16: ("vae_flux.safetensors", "flux_vae", "scripts/train_tiny_faces.py --flux-vae", FACE_VAE),
              32: ("vae_flux2.safetensors", "flux2_vae", "scripts/train_tiny_faces.py --flux2-vae", FACE_VAE),
              "AutoencoderKLQwenImage": ("vae_qwen_image.safetensors", "qwen_image_vae",
                                         "scripts/train_tiny_faces.py --qwen-image-vae", QWEN_FACE_VAE)}


def face_vae_kind(config: dict):
    """The key of ``_FACE_VAES`` a VAE config belongs to (None: no face VAE of its kind)."""
    kind = config.get("_class_name") if config.get("_class_name") in _FACE_VAES else config.get("latent_channels")
    return kind if kind in _FACE_VAES else None


def face_vae_geometry(config: dict) -> dict:
    return _FACE_VAES[face_vae_kind(config)][3]


def install_face_vae(folder: str | Path) -> None:
    """Put the shipped face VAE into a tiny model folder in place of its random one: the tiny
    SD1.x VAE for the 4-channel families (SD1.x, SDXL), the 16-channel one for FLUX and
    Z-Image, the 32-channel one (with its batch-norm statistics) for FLUX.2, the video VAE
    (with its per-channel latent statistics) for Qwen-Image. Samples of a
    denoiser trained on it decode to faces."""
    from safetensors.torch import load_file, save_file

    folder = Path(folder)
    config = json.loads((folder / "vae" / "config.json").read_text())
    kind = face_vae_kind(config)
    tiny = list(config.get("block_out_channels", []))[:1] == [16] or config.get("base_dim") == 8
    if kind is None or not tiny:
        raise ValueError(f"face VAE: '{folder}' is not a tiny model of a family with a face VAE "
                         f"({', '.join(map(str, _FACE_VAES))})")
    name, record, how, geometry = _FACE_VAES[kind]
    config.update(geometry)  # the face VAE's own geometry (2x), whatever the tiny one is
    meta = info() if record is None else info().get(record)
    if meta is None or not (WEIGHTS / name).is_file():
        raise FileNotFoundError(f"face VAE: no {kind} face VAE in '{WEIGHTS}'; run {how}")
    shipped = load_file(str(WEIGHTS / name))
    save_file({k: v.float() for k, v in shipped.items()}, str(folder / "vae" / _FILES["vae"]), metadata={"format": "pt"})
    # the latents' normalisation over the faces (FLUX.2 keeps its statistics in its weights)
    for factor in ("scaling_factor", "shift_factor", "latents_mean", "latents_std"):
        if factor in meta:
            config[factor] = meta[factor]
    (folder / "vae" / "config.json").write_text(json.dumps(config, indent=2))


def save_face_vae(folder: Path, vae, family: str, meta: dict) -> None:
    """Write the tiny face VAE of a family with its own latents (fp16; FLUX.2's batch-norm
    statistics in fp32) and record ``meta`` for it in ``tiny_faces.json``."""
    import torch
    from safetensors.torch import save_file

    name, record, _, _ = _FACE_VAES[face_vae_kind({"_class_name": type(vae).__name__, **vae.config})]
    tensors = {k: (v.detach().to(torch.float16) if v.is_floating_point() and not k.startswith("bn.") else v.detach())
               .contiguous() for k, v in vae.state_dict().items()}
    save_file(tensors, str(folder / name), metadata={"format": "pt", "family": family})
    info_path = folder / "tiny_faces.json"
    record_all = json.loads(info_path.read_text())
    record_all[record] = meta
    info_path.write_text(json.dumps(record_all, indent=2) + "\n")


def build_tiny_faces_model(folder: str | Path) -> Path:
    """A diffusers folder of the tiny SD1.x model with the shipped face weights (built once)."""
    from safetensors.torch import load_file, save_file

    from .build import build_model
    from .components import write_model_marker

    folder = Path(folder)
    info()  # the shipped weights are there, or a clear error
    if (folder / "model_index.json").is_file():
        return folder
    tmp = build_model(folder.with_name(folder.name + ".building"), "tiny")
    install_face_vae(tmp)
    for part in ("unet", "text_encoder"):
        name = _PARTS[part]
        shipped = load_file(str(WEIGHTS / name))
        target = tmp / part / _FILES[part]
        built = load_file(str(target))
        if set(shipped) != set(built) or any(shipped[k].shape != built[k].shape for k in built):
            raise ValueError(f"tiny face model: '{WEIGHTS / name}' does not match the tiny {part} architecture")
        save_file({k: v.float() for k, v in shipped.items()}, str(target), metadata={"format": "pt"})
    write_model_marker(tmp, random_weights=False, size="tiny", family="sd15", weights="tiny_faces")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder
