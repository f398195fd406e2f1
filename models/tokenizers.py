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


BPE_ENV = "PERSONA_CLIP_BPE"  # the file itself, where open-clip-torch is not installed (a bundle)


def bpe_merges_path() -> Path:
    """CLIP's BPE merges list: ``$PERSONA_CLIP_BPE``, else open-clip-torch's copy."""
    import os

    if os.environ.get(BPE_ENV):
        path = Path(os.environ[BPE_ENV])
        if not path.is_file():
            raise FileNotFoundError(f"{BPE_ENV}: '{path}' is not a file")
        return path
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("The CLIP tokenizer files are built from open-clip-torch's BPE list: "
                          "pip install open-clip-torch")
    path = Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(f"open-clip-torch is installed but '{path}' is missing")
    return path


def write_clip_tokenizer(folder: str | Path, pad_token: str = "<|endoftext|>") -> Path:
    """Write vocab.json, merges.txt and the tokenizer configs for CLIPTokenizer into folder.
    SDXL's second tokenizer (OpenCLIP ViT-bigG) is the same BPE padded with ``!``."""
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
               "unk_token": "<|endoftext|>", "pad_token": pad_token}
    (folder / "special_tokens_map.json").write_text(json.dumps(special), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {**special, "model_max_length": 77, "do_lower_case": True,
         "tokenizer_class": "CLIPTokenizer", "clean_up_tokenization_spaces": True}), encoding="utf-8")
    return folder


def write_t5_tokenizer(folder: str | Path, source: str | Path | None = None) -> Path:
    """A T5 tokenizer folder for FLUX's text encoder 2.

    With ``source`` (a folder holding T5's ``tokenizer.json`` or ``spiece.model``: a diffusers
    FLUX folder's tokenizer_2, or ComfyUI's own t5 tokenizer folder) the files are copied.
    Without it, a small byte-level Unigram tokenizer with T5's special tokens is written:
    enough for the random-weight models built from config, not for real T5 weights.
    """
    import shutil

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if source is not None:
        source = Path(source)
        names = [n for n in ("tokenizer.json", "spiece.model", "tokenizer_config.json",
                             "special_tokens_map.json") if (source / n).is_file()]
        if not any(n in names for n in ("tokenizer.json", "spiece.model")):
            raise FileNotFoundError(f"t5 tokenizer: '{source}' holds neither tokenizer.json nor spiece.model")
        for n in names:
            shutil.copyfile(source / n, folder / n)
        if "tokenizer_config.json" not in names:
            (folder / "tokenizer_config.json").write_text(json.dumps(
                {"tokenizer_class": "T5Tokenizer", "model_max_length": 512, "eos_token": "</s>",
                 "pad_token": "<pad>", "unk_token": "<unk>"}))
        return folder
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581", -1.0)] + [(chr(c), -1.0) for c in range(33, 127)]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "T5Tokenizer", "model_max_length": 512, "eos_token": "</s>",
         "pad_token": "<pad>", "unk_token": "<unk>", "extra_ids": 0}))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}))
    return folder


# Qwen's chat turn as Z-Image (and ComfyUI's Z-Image encoder) feeds a caption to Qwen3: the
# user's turn, then the opened assistant turn, no system turn. Written into every Qwen
# tokenizer folder Persona makes, so diffusers' pipelines template prompts the same way
# (the Qwen2.5 configuration ComfyUI ships would add a default system turn).
QWEN_CHAT_TEMPLATE = ("{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content']"
                      " + '<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}"
                      "{{- '<|im_start|>assistant\\n' }}{%- endif %}")
QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def write_qwen_tokenizer(folder: str | Path, source: str | Path | None = None) -> Path:
    """A Qwen tokenizer folder (``Qwen2Tokenizer``: the Qwen2.5 and Qwen3 text encoders').

    With ``source`` (a folder with Qwen's ``vocab.json`` and ``merges.txt``: ComfyUI's
    ``comfy/text_encoders/qwen25_tokenizer``, or a diffusers Z-Image folder's ``tokenizer/``)
    the files are copied. Without it, a byte-level stand-in with Qwen's special tokens is
    written: enough for the random-weight models built from config, not for real weights.
    """
    import shutil

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if source is not None:
        source = Path(source)
        if not ((source / "vocab.json").is_file() and (source / "merges.txt").is_file()):
            raise FileNotFoundError(f"qwen tokenizer: '{source}' does not hold vocab.json and merges.txt")
        for n in ("vocab.json", "merges.txt"):
            shutil.copyfile(source / n, folder / n)
        config = (json.loads((source / "tokenizer_config.json").read_text(encoding="utf-8"))
                  if (source / "tokenizer_config.json").is_file() else {})
    else:
        symbols = _bytes_to_unicode()
        (folder / "vocab.json").write_text(json.dumps({s: i for i, s in enumerate(symbols)}, ensure_ascii=False),
                                           encoding="utf-8")
        (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
        config = {"added_tokens_decoder": {
            str(len(symbols) + i): {"content": s, "special": True, "lstrip": False, "rstrip": False,
                                    "normalized": False, "single_word": False} for i, s in enumerate(QWEN_SPECIAL)}}
    config.update({"tokenizer_class": "Qwen2Tokenizer", "chat_template": QWEN_CHAT_TEMPLATE,
                   "pad_token": "<|endoftext|>", "eos_token": "<|im_end|>", "model_max_length": 131072})
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder


def find_tokenizer_folder(label: str, env: str, comfy_folders: list[str], weights_name: str,
                          has_files, hint: str) -> Path:
    """A tokenizer's folder: ``$env``, then the copy inside the ComfyUI install Persona runs in
    (``comfy_folders``, relative to its root), then the weights folder's ``weights_name``; the
    first where ``has_files(folder)``, else an error naming every place looked and ``hint``."""
    import os

    from ..core.host import comfy_base_dir
    from ..core.paths import weights_dir

    candidates = [Path(os.environ[env])] if os.environ.get(env) else []
    root = comfy_base_dir()
    if root is not None:
        candidates += [root / sub for sub in comfy_folders]
    candidates.append(weights_dir() / weights_name)
    for c in candidates:
        if has_files(c):
            return c
    raise FileNotFoundError(f"{label}: not found; looked in " + ", ".join(str(c) for c in candidates) + f". {hint}")


def find_qwen_tokenizer() -> Path:
    """Qwen's tokenizer files: $PERSONA_QWEN_TOKENIZER, then the copy inside a ComfyUI install
    (``comfy/text_encoders/qwen25_tokenizer``, used for Qwen2.5 and Qwen3 alike), then the
    weights folder."""
    return find_tokenizer_folder(
        "qwen tokenizer", "PERSONA_QWEN_TOKENIZER", ["comfy/text_encoders/qwen25_tokenizer"], "qwen_tokenizer",
        lambda c: (c / "vocab.json").is_file() and (c / "merges.txt").is_file(),
        "Set PERSONA_QWEN_TOKENIZER to a folder holding Qwen's vocab.json and merges.txt (ComfyUI ships them in "
        "comfy/text_encoders/qwen25_tokenizer; a diffusers Z-Image folder has them in tokenizer/)")


def find_t5_tokenizer() -> Path:
    """T5's tokenizer files: $PERSONA_T5_TOKENIZER, then the copy inside a ComfyUI install
    (comfy/text_encoders/t5_tokenizer), then the weights folders."""
    return find_tokenizer_folder(
        "t5 tokenizer", "PERSONA_T5_TOKENIZER", ["comfy/text_encoders/t5_tokenizer", "comfy/t5_tokenizer"],
        "t5_tokenizer", lambda c: (c / "tokenizer.json").is_file() or (c / "spiece.model").is_file(),
        "Set PERSONA_T5_TOKENIZER to a folder holding T5's tokenizer.json (any FLUX diffusers folder's "
        "tokenizer_2/ has one; ComfyUI ships one in comfy/text_encoders/t5_tokenizer)")
