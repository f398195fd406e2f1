"""Mistral's tokenizer (tekken) for FLUX.2 dev's text encoder, from local files only.

Mistral ships its tokenizer as ``tekken.json`` (a byte-level BPE vocabulary by rank and the
special tokens); ComfyUI's Mistral text-encoder files carry the same JSON inside the
safetensors file as a ``uint8`` tensor named ``tekken_model``. Either is converted here with
transformers' own tekken converter into a fast tokenizer folder (``tokenizer.json``), with the
chat template FLUX.2 dev reads captions in: ``<s>[SYSTEM_PROMPT]...[/SYSTEM_PROMPT][INST]
caption[/INST]``. A diffusers FLUX.2 dev folder's ``tokenizer/`` is read as it is.
"""
from __future__ import annotations

import base64
import json
from pathlib import Path

TEKKEN_KEY = "tekken_model"  # where ComfyUI's Mistral files keep their tokenizer
TOKENIZER_ENV = "PERSONA_MISTRAL_TOKENIZER"  # a folder with tekken.json or tokenizer.json

# Mistral's v7 special tokens, by rank (Mistral Small 3.1's tokenizer)
V7_SPECIAL = ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
              "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]",
              "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]")
TEKKEN_PATTERN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
                  r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|"
                  r"\s*[\r\n]+|\s+(?!\S)|\s+")

# Mistral Small's chat turns, for message contents given as text or as lists of text parts
# (how diffusers' Flux2Pipeline formats them)
CHAT_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}"
    "{%- if message['content'] is string %}{%- set text = message['content'] %}"
    "{%- else %}{%- set text = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text')"
    " | join('') %}{%- endif %}"
    "{%- if message['role'] == 'system' %}{{- '[SYSTEM_PROMPT]' + text + '[/SYSTEM_PROMPT]' }}"
    "{%- elif message['role'] == 'user' %}{{- '[INST]' + text + '[/INST]' }}"
    "{%- else %}{{- text + eos_token }}{%- endif %}{%- endfor %}")


def small_tekken() -> bytes:
    """A tekken vocabulary for random-weight models: the v7 special tokens, the 256 bytes and a
    few merges (``photo``, `` a``): enough to exercise the real conversion, not real weights."""
    merges = [b"ph", b"pho", b"to", b"photo", b" a", b" o", b"of", b" of"]
    vocab = [{"rank": i, "token_bytes": base64.b64encode(bytes([i])).decode(), "token_str": None} for i in range(256)]
    vocab += [{"rank": 256 + j, "token_bytes": base64.b64encode(t).decode(), "token_str": None}
              for j, t in enumerate(merges)]
    specials = 32
    return json.dumps({
        "config": {"pattern": TEKKEN_PATTERN, "num_vocab_tokens": len(vocab), "default_vocab_size": specials + len(vocab),
                   "default_num_special_tokens": specials, "version": "v7"},
        "vocab": vocab,
        "special_tokens": [{"rank": i, "token_str": s, "is_control": True} for i, s in enumerate(V7_SPECIAL)],
    }).encode()


SMALL_VOCAB = 32 + 256 + 8  # the vocabulary size of small_tekken()


def tekken_in_file(path: str | Path) -> bytes | None:
    """The tekken JSON a ComfyUI Mistral file carries, or None (its header alone is read first)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        if TEKKEN_KEY not in f.keys():
            return None
        return f.get_tensor(TEKKEN_KEY).numpy().tobytes()


def write_mistral_tokenizer(folder: str | Path, tekken: bytes | None = None, source: str | Path | None = None) -> Path:
    """A fast tokenizer folder for FLUX.2 dev: converted from ``tekken`` (a file's own JSON),
    copied from ``source`` (a folder holding ``tokenizer.json``, or ``tekken.json`` to convert),
    or, with neither, from :func:`small_tekken` (random-weight models)."""
    import shutil

    from transformers.integrations.mistral import convert_tekken_tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if source is not None:
        source = Path(source)
        if (source / "tokenizer.json").is_file():
            for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
                if (source / name).is_file():
                    shutil.copyfile(source / name, folder / name)
            _configure(folder)
            return folder
        if not (source / "tekken.json").is_file():
            raise FileNotFoundError(f"mistral tokenizer: '{source}' holds neither tokenizer.json nor tekken.json")
        tekken = (source / "tekken.json").read_bytes()
    try:
        json.loads(tekken or small_tekken())["vocab"]
    except (ValueError, KeyError, TypeError):
        raise ValueError("mistral tokenizer: the tekken data is not Mistral's tekken JSON") from None
    (folder / "tekken.json").write_bytes(tekken or small_tekken())
    convert_tekken_tokenizer(str(folder / "tekken.json"), chat_template=CHAT_TEMPLATE).save_pretrained(folder)
    _configure(folder)
    return folder


def _configure(folder: Path) -> None:
    """Mistral's special tokens, left padding and the chat template in tokenizer_config.json."""
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    config.update({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
                   "pad_token": "<pad>", "unk_token": "<unk>", "padding_side": "left", "chat_template": CHAT_TEMPLATE,
                   "model_max_length": 131072})
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")


def load_mistral_tokenizer(folder: str | Path):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(folder)
