"""What the families share whose transformer reads the VAE's latents normalised and packed 2x2
into tokens, trained on the velocity ``noise - x0`` (FLUX.2, Qwen-Image). Each family defines
``to_model`` (VAE latents ``[B, C, h, w]`` -> tokens) and ``from_model`` (its inverse); the loop
keeps the noisy latents in the VAE's space, so the identity loss can decode them."""
from __future__ import annotations

from ...core.transfer import to_device
from .flux import Flux


class PackedFlow:
    def predicted_x0(self, comps, p):
        """``x_t = (1 - sigma) x0 + sigma * noise`` in the token space and the model predicts
        ``noise - x0``, so ``x0 = x_t - sigma * v``, returned in the VAE's space."""
        h, w = p.noisy.shape[-2:]
        sigma = (p.timesteps.float() / 1000).view(-1, 1, 1)
        return self.from_model(comps, self.to_model(comps, p.noisy) - sigma * p.pred.float(), h, w)

    def pixel_weight(self, weight, pred):
        """Packed like the latents: each 2x2 patch's four weights, repeated per channel."""
        channels = pred.shape[-1] // 4
        return to_device(Flux.pack(weight.expand(-1, channels, -1, -1)), pred.device)
