"""Images per second of each metric and of the full set at 512 px, models loaded once.

Backbones whose pretrained weights are not on this machine are built with random weights
(same architecture, same cost), and the table says so.

    python bench/metrics_throughput.py [--images 16]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=16)
    args = parser.parse_args()
    from comfyui_persona.core.clip_models import load_clip
    from comfyui_persona.faces.identity import get_embedder, identity_scores
    from comfyui_persona.metrics.distribution import fid, kid
    from comfyui_persona.metrics.inception import InceptionFeatures, features
    from comfyui_persona.metrics.perceptual import LPIPS
    from comfyui_persona.metrics.ssim import ssim, to_tensor
    from comfyui_persona.faces.samples import astronaut, grace_hopper

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rng = np.random.default_rng(0)
    base = [astronaut(), np.asarray(Image.fromarray(grace_hopper()).resize((512, 512)))]
    images = [np.clip(base[i % 2] + rng.normal(0, 6, base[0].shape), 0, 255).astype(np.uint8)
              for i in range(args.images)]
    refs = [astronaut()]
    n = len(images)

    def weights_note(loader):
        try:
            loader()
            return "pretrained"
        except FileNotFoundError:
            return "random (same cost)"

    lp_note = weights_note(lambda: LPIPS("alex"))
    lp = LPIPS("alex", "pretrained" if lp_note == "pretrained" else "random")
    inc_note = weights_note(lambda: InceptionFeatures("pretrained"))
    inc = InceptionFeatures("pretrained" if inc_note == "pretrained" else "random")
    clip_note = weights_note(lambda: load_clip("ViT-B-32", "laion2b"))
    clip, preprocess, tok = load_clip("ViT-B-32", "laion2b" if clip_note == "pretrained" else "random")
    emb = get_embedder("dlib")
    emb.embed(refs)
    g = to_tensor(images)
    r = to_tensor(refs * n)

    timings = {}

    def timed(name, note, fn):
        start = time.perf_counter()
        fn()
        timings[name] = (time.perf_counter() - start, note)

    timed("identity (MTCNN + dlib)", "pretrained", lambda: identity_scores(emb, images, refs))
    timed("SSIM to reference", "-", lambda: ssim(g, r))
    timed("LPIPS to reference (alex)", lp_note, lambda: lp(g, r))
    timed("diversity (pairwise LPIPS)", lp_note, lambda: lp.pairwise(g))
    timed("Inception features + FID/KID", inc_note,
          lambda: (lambda f: (fid(f, f), kid(f, f, subsets=10)))(features(inc, images)))

    def clip_all():
        with torch.no_grad():
            x = torch.stack([preprocess(Image.fromarray(im)) for im in images])
            clip.encode_image(x)
            clip.encode_text(tok(["a photo of sks person"] * n))

    timed("CLIP score + fidelity", clip_note, clip_all)
    total = sum(t for t, _ in timings.values())
    print(f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'CPU'} "
          f"({torch.get_num_threads()} threads), {n} images at 512 px")
    print("| metric | weights | seconds | images/s |")
    print("|---|---|---|---|")
    for name, (sec, note) in timings.items():
        print(f"| {name} | {note} | {sec:.2f} | {n / sec:.1f} |")
    print(f"| **full set** | | {total:.2f} | {n / total:.2f} |")


if __name__ == "__main__":
    main()
