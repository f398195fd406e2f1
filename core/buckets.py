"""Aspect-ratio buckets: image sizes of (at most) the same pixel count as the square training
resolution, so that portrait and landscape images train without being cut to a square.

At resolution R the buckets are every width W that is a multiple of ``multiple`` from R/2 up,
each with the largest height H (a multiple too) such that W * H <= R * R, aspect ratios up to
MAX_ASPECT, and of two sizes with the same side only the larger kept. At 1024 px with
multiples of 64 these include the buckets SDXL is commonly trained on (1024x1024, 1152x896,
1216x832, 1344x768 and their transposes; 1600x640 in place of 1536x640, which has fewer pixels); at 512 px the SD1.5
equivalents; FLUX, whose sides need only be multiples of 16, has finer steps. No bucket has more pixels than
R * R, so a memory plan made for the square resolution holds for every bucket.
"""
from __future__ import annotations

import math

MAX_ASPECT = 2.5  # 1536 x 640 at 1024 px


MULTIPLE = 64  # a side every family takes: the UNets' 8x VAE and three 2x downsamplings


def buckets(resolution: int, multiple: int = MULTIPLE) -> list[tuple[int, int]]:
    """(width, height) of every bucket at ``resolution``, sorted by aspect ratio (w / h)."""
    area = resolution * resolution
    best: dict[int, int] = {}  # height -> the widest width that fits
    w = max(multiple, math.ceil(resolution / 2 / multiple) * multiple)
    while w <= resolution * MAX_ASPECT:
        h = (area // w) // multiple * multiple
        if h >= multiple and w <= h * MAX_ASPECT and w >= resolution:
            best[h] = max(best.get(h, 0), w)
        w += multiple
    landscape = {(w, h) for h, w in best.items()} | {(resolution, resolution)}
    return sorted(landscape | {(h, w) for w, h in landscape}, key=lambda s: s[0] / s[1])


def nearest_bucket(width: int, height: int, resolution: int, multiple: int = MULTIPLE) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest (in log ratio) to ``width / height``; ties go
    to the larger bucket."""
    aspect = math.log(width / height)
    return min(buckets(resolution, multiple), key=lambda s: (abs(math.log(s[0] / s[1]) - aspect), -s[0] * s[1]))


def cover_crop(width: int, height: int, target: tuple[int, int]) -> tuple[float, int, int]:
    """How an image of ``width`` x ``height`` fills ``target`` (w, h): the scale that covers it,
    and the (left, top) of the centred crop in scaled pixels (SDXL's crop conditioning)."""
    tw, th = target
    scale = max(tw / width, th / height)
    return scale, int(round((width * scale - tw) / 2)), int(round((height * scale - th) / 2))
