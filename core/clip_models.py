"""OpenCLIP models loaded once per process from local weights (identity of non-face
subjects, CLIP score, subject fidelity). ``weights='random'`` builds the architecture
untrained, only to exercise code paths; a warning says so."""
from __future__ import annotations

import functools
import logging

from .deps import require

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=2)
def load_clip(model_name: str = "ViT-B-32", weights: str = "laion2b", device: str = "cpu"):
    """(model, preprocess, tokenizer) for ``model_name``; ``weights`` is 'laion2b' (the file
    looked up on disk), a path to a weights file, or 'random'."""
    open_clip = require("open_clip", "CLIP models")
    if weights == "random":
        log.warning("CLIP %s with RANDOM weights: scores carry no meaning (code paths only)", model_name)
        pretrained = None
    elif weights == "laion2b" and model_name == "ViT-B-32":
        from .weights import CLIP_B32, find_weights

        pretrained = str(find_weights(CLIP_B32))
    else:
        pretrained = weights
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained,
                                                                 device=device)
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(model_name)
