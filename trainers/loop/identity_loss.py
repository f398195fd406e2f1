"""The identity term of reference 000's Eq. 1: at low-noise timesteps, the predicted clean
latent x0 (the family's ``predicted_x0``: DDPM epsilon or v, FLUX's flow velocity) of the
face region is decoded by the VAE and embedded by a differentiable face
encoder (FaceNet); the loss is 1 - cos(embedding, reference embedding).

Only the face box of the latent is decoded (the dataset's face masks give the box), which
keeps the extra memory to one small VAE decode.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


@dataclass
class IdentityLoss:
    encoder: object  # FacenetEmbedder
    reference: torch.Tensor  # [D] unit vector
    box: tuple[int, int, int, int]  # latent x0, y0, x1, y1
    max_timestep: int

    def __call__(self, comps, p, n: int) -> tuple[torch.Tensor | None, int]:
        """Mean identity loss over the low-noise samples among the first ``n`` (the instance
        images) of the prediction ``p`` (None when there are none)."""
        from ...models.families import get_family

        select = p.timesteps[:n] < self.max_timestep
        if not bool(select.any()):
            return None, 0
        family = get_family(comps.family)
        x0 = family.predicted_x0(comps, p)[:n][select]
        bx0, by0, bx1, by1 = self.box
        crop = x0[:, :, by0:by1, bx0:bx1]  # decode only the face box
        vae_dtype = next(comps.vae.parameters()).dtype
        latents = crop / comps.vae_scale + comps.vae_shift
        faces = family.decode_latents(comps.vae, latents.to(vae_dtype)).float().clamp(-1, 1)
        emb = self.encoder.embed_tensor(faces)
        loss = (1 - emb @ self.reference.to(emb.device)).mean()
        return loss, int(select.sum())


def face_box_latent(mask_paths, resolution: int, pad: int = 1) -> tuple[int, int, int, int]:
    """Union of the dataset's face-mask boxes, in latent cells at ``resolution``."""
    x0 = y0 = 10 ** 9
    x1 = y1 = -1
    for path in mask_paths:
        with Image.open(path) as im:
            m = np.asarray(im.convert("L").resize((resolution, resolution))) > 127
        ys, xs = np.nonzero(m)
        if len(xs) == 0:
            continue
        x0, y0 = min(x0, xs.min()), min(y0, ys.min())
        x1, y1 = max(x1, xs.max() + 1), max(y1, ys.max() + 1)
    if x1 < 0:
        raise ValueError("dataset: the face masks are empty; the identity loss needs faces")
    n = resolution // 8
    return (max(0, x0 // 8 - pad), max(0, y0 // 8 - pad), min(n, -(-x1 // 8) + pad), min(n, -(-y1 // 8) + pad))


def build_identity_loss(cfg, items, instance_pixels: torch.Tensor, device) -> IdentityLoss:
    from ...faces.identity import FacenetEmbedder

    masks = [it.mask for it in items if it.mask is not None]
    if len(masks) != len(items):
        raise type(cfg).field_error("identity_loss_weight", "needs a dataset with face "
                          "masks (made by persona prepare)")
    box = face_box_latent(masks, cfg.resolution)
    encoder = FacenetEmbedder(weights=cfg.identity_weights, device=str(device))
    px = [c * 8 for c in box]
    with torch.no_grad():
        crops = instance_pixels[:, :, px[1]:px[3], px[0]:px[2]].to(device)
        ref = encoder.embed_tensor(crops).mean(0)
    return IdentityLoss(encoder, F.normalize(ref, dim=0), box, cfg.identity_max_timestep)
