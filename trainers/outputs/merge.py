"""Several subject LoRAs in one file (kohya layout, what every tool loads).

Each LoRA ``i`` at strength ``s_i`` changes a module's weight by
``s_i * (alpha_i / rank_i) * up_i @ down_i``. Two ways to put them in one file:

- ``concat``: the downs stacked and the ups side by side, each up scaled by its
  ``s_i * alpha_i / rank_i``, alpha set to the new rank: the file applies exactly the sum of
  the LoRAs (rank = the sum of their ranks).
- ``svd``: that sum computed per module and cut to ``rank`` by a truncated SVD
  (``up = U sqrt(S)``, ``down = sqrt(S) V^T``, alpha = rank): a smaller file, exact when
  ``rank`` reaches the sum's rank, else the best approximation of that rank.

DoRA files (``dora_scale``) are refused: their magnitudes do not add.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch

def modules(tensors: dict[str, torch.Tensor], source: str) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """{module: (down, up, scale alpha/rank)} of a kohya LoRA."""
    if any(k.endswith(".dora_scale") for k in tensors):
        raise ValueError(f"{source}: a DoRA LoRA (dora_scale keys); its magnitudes cannot be merged")
    out = {}
    for key, down in tensors.items():
        if not key.endswith(".lora_down.weight"):
            continue
        name = key[: -len(".lora_down.weight")]
        up = tensors.get(f"{name}.lora_up.weight")
        if up is None:
            raise ValueError(f"{source}: '{name}' has a lora_down but no lora_up")
        rank = down.shape[0]
        alpha = float(tensors[f"{name}.alpha"]) if f"{name}.alpha" in tensors else float(rank)
        out[name] = (down.float(), up.float(), alpha / rank)
    if not out:
        raise ValueError(f"{source}: no kohya LoRA tensors (lora_down / lora_up)")
    return out


def delta(down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """up @ down as a [out, in * kh * kw] matrix."""
    return up.flatten(1) @ down.flatten(1)


def merge(loras: list[dict[str, torch.Tensor]], strengths: list[float], method: Literal["concat", "svd"] = "concat",
          rank: int | None = None, sources: list[str] | None = None) -> dict[str, torch.Tensor]:
    if len(loras) != len(strengths):
        raise ValueError(f"strengths: one per LoRA ({len(loras)}), got {len(strengths)}")
    if method == "svd" and not rank:
        raise ValueError("rank: the svd merge needs the rank of the merged LoRA")
    parsed = [modules(t, (sources or [f"LoRA {i + 1}" for i in range(len(loras))])[i]) for i, t in enumerate(loras)]
    out: dict[str, torch.Tensor] = {}
    for name in sorted(set().union(*parsed)):
        parts = [(p[name][0], p[name][1] * (s * p[name][2])) for p, s in zip(parsed, strengths) if name in p]
        if method == "concat":
            down = torch.cat([d for d, _ in parts], dim=0)
            up = torch.cat([u for _, u in parts], dim=1)
        else:
            d0, u0 = parts[0]
            total = sum(delta(d, u) for d, u in parts)
            U, S, Vh = torch.linalg.svd(total, full_matrices=False)
            k = min(rank, S.shape[0])
            root = S[:k].sqrt()
            up = (U[:, :k] * root).reshape(u0.shape[0], k, *u0.shape[2:])
            down = (root[:, None] * Vh[:k]).reshape(k, *d0.shape[1:])
        out[f"{name}.lora_down.weight"] = down.contiguous()
        out[f"{name}.lora_up.weight"] = up.contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(down.shape[0]))
    return out


def merge_files(paths: list[str | Path], strengths: list[float], out: str | Path,
                method: Literal["concat", "svd"] = "concat", rank: int | None = None) -> Path:
    """Merge LoRA files into ``out`` (fp16, with the sources, strengths and method in its metadata)."""
    from safetensors.torch import load_file, save_file

    from .export import read_lora_metadata

    tensors = merge([load_file(str(p)) for p in paths], strengths, method, rank, [str(p) for p in paths])
    metas = [read_lora_metadata(p) for p in paths]
    meta = {"persona.merged_from": json.dumps([{"file": Path(p).name, "token": m.get("persona.token"),
                                               "class": m.get("persona.class"), "strength": s}
                                              for p, m, s in zip(paths, metas, strengths)]),
            "persona.merge_method": method, "ss_network_module": "networks.lora"}
    for key in ("persona.base_model", "persona.base_model_hash", "ss_base_model_version", "modelspec.architecture"):
        values = {m.get(key) for m in metas}
        if len(values) == 1 and None not in values:
            meta[key] = values.pop()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half() if not k.endswith(".alpha") else v for k, v in tensors.items()}, str(out), metadata=meta)
    return out
