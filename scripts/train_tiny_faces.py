"""Train the shipped tiny face model (``models/weights/tiny_faces``) from the embedded sample photos.

The demo's default model is the tiny SD1.x architecture (``models/architectures.py``). With
random weights it decodes noise, so nothing it draws has a face for the identity gate. This
script gives it the two things it needs, from data that ships in installed packages:

1. **VAE**: the tiny autoencoder trained to reconstruct images (L1 + a small KL term) on
   random crops of scikit-image's photos and on the aligned sample faces.
2. **UNet**: the tiny denoiser trained with Persona's own trainer (full fine-tune, the
   ``dreambooth`` method) on the aligned faces of both sample people (scikit-image's
   astronaut, matplotlib's Grace Hopper), captioned ``a photo of a person``, a third of the
   captions dropped to empty. It draws one of those two faces for most prompts: a face prior
   of two people, on which the demo's LoRA learns which of them ``sks person`` is.

Deterministic on a CPU (seeded), about 15 minutes on two cores. Writes fp16 safetensors of
the models plus ``tiny_faces.json`` (the VAE's latent scaling factor, the data, the steps)::

    .venv/bin/python scripts/train_tiny_faces.py [--out models/weights/tiny_faces]

``--flux-vae`` trains only the 16-channel tiny FLUX VAE the same way (``vae_flux.safetensors``,
about 9 minutes; its scaling and shift factors go into ``tiny_faces.json``), on which the FLUX
and Z-Image memorisation tests train; ``--flux2-vae`` the 32-channel FLUX.2 one
(``vae_flux2.safetensors``, with its batch-norm statistics); ``--qwen-image-vae`` Qwen-Image's
video VAE (``vae_qwen_image.safetensors``, with its per-channel latent statistics).
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from comfyui_persona.faces.config import PrepareConfig
from comfyui_persona.faces.dataset import prepare_dataset
from comfyui_persona.faces.samples import grace_hopper, write_subject_photos
from comfyui_persona.models.architectures import instantiate
from comfyui_persona.models.build import build_model
from comfyui_persona.models.tiny_faces import CAPTION, RESOLUTION, save_weights
from comfyui_persona.trainers.config import TrainConfig
from comfyui_persona.trainers.loop.train import train


def aligned_faces(work: Path) -> dict[str, list[Path]]:
    """Aligned 128 px faces of both sample people, through Persona's own prepare step."""
    astro, hopper = work / "photos" / "astronaut", work / "photos" / "hopper"
    write_subject_photos(astro, count=8)
    hopper.mkdir(parents=True, exist_ok=True)
    base = Image.fromarray(grace_hopper())
    for i, img in enumerate([base, base.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                             base.rotate(8, resample=Image.Resampling.BICUBIC),
                             base.rotate(-8, resample=Image.Resampling.BICUBIC)]):
        img.save(hopper / f"hopper_{i + 1:02d}.png")
    out = {}
    for name, folder in (("astronaut", astro), ("hopper", hopper)):
        result = prepare_dataset(folder, work / "aligned" / name, PrepareConfig(resolution=128))
        out[name] = [Path(result.dataset_dir) / e["image"] for e in result.accepted]
    return out


def natural_images() -> list[np.ndarray]:
    from skimage import data

    images = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.immunohistochemistry()]
    images.append(np.stack([data.camera()] * 3, -1))
    return [np.asarray(i) for i in images]


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 127.5 - 1


def _random_crop(t: torch.Tensor, rng: np.random.Generator, size: int, smallest: float) -> torch.Tensor:
    h, w = t.shape[1:]
    side = int(min(h, w) * rng.uniform(smallest, 1.0))
    y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    crop = t[None, :, y:y + side, x:x + side]
    return torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear", antialias=True)[0]


def train_vae(vae, faces: list[np.ndarray], steps: int, seed: int = 0, family: str = "sd15") -> float:
    from comfyui_persona.models.families import get_family

    fam = get_family(family)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    photos = [_tensor(i) for i in natural_images()]
    face_t = [_tensor(i) for i in faces]
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=2e-4)
    l1 = float("nan")
    for step in range(steps):
        batch = [_random_crop(face_t[rng.integers(len(face_t))], rng, RESOLUTION, 0.7) if k % 2 else
                 _random_crop(photos[rng.integers(len(photos))], rng, RESOLUTION, 0.15) for k in range(16)]
        x = torch.stack(batch)
        mean, std = fam.encode_pixels(vae, x)  # the family's VAE, an image as it reads one
        rec = fam.decode_latents(vae, mean + std * torch.randn_like(std))
        loss_l1 = (rec - x).abs().mean()
        kl = 0.5 * (mean ** 2 + std ** 2 - 1 - torch.log(std ** 2)).sum(dim=(1, 2, 3))
        loss = loss_l1 + 1e-6 * kl.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        l1 = float(loss_l1.detach())
        if step % 200 == 0 or step == steps - 1:
            print(f"vae step {step}: L1 {l1:.4f}", flush=True)
    return l1


def train_latent_vae(out: Path, family: str, steps: int) -> None:
    """The tiny VAE of a family whose latents are not SD's (16 channels for FLUX.1 and Z-Image,
    FLUX.2's 32 with its batch-norm statistics, Qwen-Image's video VAE), in the face VAEs'
    geometry, trained like the SD1.x one. Its latents over the aligned faces are normalised to
    zero mean and unit spread: by scaling and shift factors, for FLUX.2 by the statistics of
    its 2x2 patches, which its pipeline reads from the VAE's ``bn`` buffers, for Qwen-Image by
    per-channel ``latents_mean``/``latents_std`` in its config."""
    from comfyui_persona.models.tiny_faces import face_vae_geometry, save_face_vae

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        faces = aligned_faces(Path(tmp))
        face_images = [np.asarray(Image.open(p).convert("RGB")) for ps in faces.values() for p in ps]
    tiny = instantiate(family, "tiny", tokenizers=False, text_encoders=False).vae
    torch.manual_seed(0)
    vae = type(tiny).from_config({**tiny.config, **face_vae_geometry({"_class_name": type(tiny).__name__,
                                                                        **tiny.config})})
    l1 = train_vae(vae, face_images, steps, family=family)
    vae.eval()
    meta = {"vae_steps": steps, "vae_l1": round(l1, 4)}
    if hasattr(vae, "bn"):  # FLUX.2: per-channel statistics of the patchified latents
        meta.update(set_patch_statistics(vae, face_images))
    elif hasattr(vae.config, "latents_mean"):  # Qwen-Image: per-channel statistics in its config
        meta.update(channel_statistics(vae, face_images, family))
    else:
        with torch.no_grad():
            latents = vae.encode(_faces_tensor(face_images)).latent_dist.mean
        meta.update(shift_factor=round(float(latents.mean()), 5), scaling_factor=round(1.0 / float(latents.std()), 5))
    meta["seconds"] = round(time.perf_counter() - start)
    save_face_vae(out, vae, family, meta)
    print(json.dumps(meta, indent=2))


def _faces_tensor(face_images: list[np.ndarray]) -> torch.Tensor:
    return torch.stack([_tensor(np.asarray(Image.fromarray(i).resize((RESOLUTION,) * 2, Image.Resampling.LANCZOS)))
                        for i in face_images])


def set_patch_statistics(vae, face_images: list[np.ndarray]) -> dict:
    """FLUX.2's batch-norm statistics (``vae.bn``) over the aligned faces' 2x2-patchified
    latents as the trainer draws them (the posterior's mean plus its noise): each channel's
    mean, and its variance = the variance of the means + the mean posterior variance. (A
    latent channel the decoder does not use is posterior noise of variance ~1 with a near
    constant mean; normalised by the means' spread alone it would be hundreds of times the
    unit scale the transformer is trained at.)"""
    def patches(t):
        b, c, h, w = t.shape
        return t.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)

    with torch.no_grad():
        dist = vae.encode(_faces_tensor(face_images)).latent_dist
        mean, std = patches(dist.mean), patches(dist.std)
        vae.bn.running_mean.copy_(mean.mean(dim=(0, 2, 3)))
        vae.bn.running_var.copy_(mean.var(dim=(0, 2, 3)) + (std ** 2).mean(dim=(0, 2, 3)))
    return {"latent_std": round(float(dist.mean.std()), 5),
            "channels_in_use": int((mean.var(dim=(0, 2, 3)) > (std ** 2).mean(dim=(0, 2, 3))).sum())}


def channel_statistics(vae, face_images: list[np.ndarray], family: str) -> dict:
    """Qwen-Image's ``latents_mean``/``latents_std`` over the aligned faces' latents as the
    trainer draws them: each channel's mean, and its spread = sqrt(the variance of the means +
    the mean posterior variance) (see :func:`set_patch_statistics`)."""
    from comfyui_persona.models.families import get_family

    with torch.no_grad():
        mean, std = get_family(family).encode_pixels(vae, _faces_tensor(face_images))
    spread = torch.sqrt(mean.var(dim=(0, 2, 3)) + (std ** 2).mean(dim=(0, 2, 3)))
    return {"latents_mean": [round(float(v), 5) for v in mean.mean(dim=(0, 2, 3))],
            "latents_std": [round(float(v), 5) for v in spread],
            "channels_in_use": int((mean.var(dim=(0, 2, 3)) > (std ** 2).mean(dim=(0, 2, 3))).sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "models" / "weights" / "tiny_faces"))
    ap.add_argument("--vae-steps", type=int, default=2000)
    ap.add_argument("--unet-steps", type=int, default=1500)
    ap.add_argument("--flux-vae", action="store_true",
                    help="only the 16-channel tiny FLUX VAE (vae_flux.safetensors), for the memorisation tests")
    ap.add_argument("--flux2-vae", action="store_true",
                    help="only the 32-channel tiny FLUX.2 VAE (vae_flux2.safetensors), for the memorisation tests")
    ap.add_argument("--qwen-image-vae", action="store_true",
                    help="only Qwen-Image's tiny video VAE (vae_qwen_image.safetensors), for the memorisation tests")
    args = ap.parse_args()
    if args.flux_vae or args.flux2_vae or args.qwen_image_vae:
        family = "flux2" if args.flux2_vae else "qwen_image" if args.qwen_image_vae else "flux"
        train_latent_vae(Path(args.out), family, args.vae_steps)
        return
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        faces = aligned_faces(work)
        face_images = [np.asarray(Image.open(p).convert("RGB")) for ps in faces.values() for p in ps]
        vae = instantiate("sd15", "tiny", tokenizers=False, text_encoders=False).vae
        vae_l1 = train_vae(vae, face_images, args.vae_steps)
        with torch.no_grad():
            x = torch.stack([_tensor(np.asarray(Image.fromarray(i).resize((RESOLUTION,) * 2, Image.Resampling.LANCZOS)))
                             for i in face_images])
            latent_std = float(vae.encode(x).latent_dist.mean.std())
        vae.register_to_config(scaling_factor=round(1.0 / latent_std, 5))
        # the UNet, trained by Persona's own trainer on a model folder that holds the new VAE
        model = build_model(work / "model", "tiny")
        shutil.rmtree(model / "vae")
        vae.save_pretrained(model / "vae")
        data = work / "faces"
        data.mkdir()
        for name, paths in faces.items():
            for p in paths:
                shutil.copy(p, data / f"{name}_{p.name}")
                (data / f"{name}_{p.stem}.txt").write_text(CAPTION)
        cfg = TrainConfig(base_model=str(model), dataset=str(data), output_dir=str(work / "run"), method="dreambooth",
                          resolution=RESOLUTION, steps=args.unet_steps, batch_size=4, learning_rate=1e-3,
                          lr_scheduler="cosine", warmup_steps=50, caption_dropout=0.3, caption_dropout_to="empty",
                          checkpoint_every=0, validation_identity="off", aspect_buckets=False, seed=0)
        result = train(cfg)
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        unet = UNet2DConditionModel.from_pretrained(work / "run" / "model" / "unet")
        text_encoder = CLIPTextModel.from_pretrained(model / "text_encoder")
        meta = {"resolution": RESOLUTION, "caption": CAPTION, "vae_steps": args.vae_steps, "vae_l1": round(vae_l1, 4),
                "latent_std": round(latent_std, 4), "scaling_factor": vae.config.scaling_factor,
                "unet_steps": args.unet_steps,
                "unet_final_loss": result.final_loss, "people": {k: len(v) for k, v in faces.items()},
                "seconds": round(time.perf_counter() - start)}
        save_weights(Path(args.out), unet, vae, text_encoder, meta)
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
