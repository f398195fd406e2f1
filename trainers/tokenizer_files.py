"""The exact CLIP BPE tokenizer files, rebuilt offline from the merges list that ships in
open-clip-torch (``open_clip/bpe_simple_vocab_16e6.txt.gz``).

``vocab.json`` is fully determined by the merges: the 256 byte symbols, the same with
``</w>``, one entry per merge, then ``<|startoftext|>`` and ``<|endoftext|>`` (49408 in all).
"""
from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

N_MERGES = 49152 - 256 - 2


def _bytes_to_unicode() -> list[str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def bpe_merges_path() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("The CLIP tokenizer files are built from open-clip-torch's BPE list: "
                          "pip install open-clip-torch")
    path = Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(f"open-clip-torch is installed but '{path}' is missing")
    return path


def write_clip_tokenizer(folder: str | Path) -> Path:
    """Write vocab.json, merges.txt and the tokenizer configs for CLIPTokenizer into folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(bpe_merges_path(), "rt", encoding="utf-8").read().split("\n")
    merges = lines[1:N_MERGES + 1]
    symbols = _bytes_to_unicode()
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)},
                                                  ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {**special, "model_max_length": 77, "do_lower_case": True,
         "tokenizer_class": "CLIPTokenizer", "clean_up_tokenization_spaces": True}), encoding="utf-8")
    return folder
