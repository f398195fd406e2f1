"""Safetensors files whose tensors' bytes are a hole in the file: the header of a published-size
model on no disk space, for what reads headers alone (the host-memory figure, the planner's
choice of architecture)."""
from __future__ import annotations

import json
import struct


def sparse_safetensors(path, shapes: dict[str, tuple[list[int], str]]) -> int:
    """A valid safetensors file whose tensors' bytes are a hole in the file (no disk used):
    the header is real, the data reads as zeros. Returns the data's size in bytes."""
    sizes = {"BF16": 2, "F32": 4, "F16": 2, "F8_E4M3": 1}
    header, offset = {}, 0
    for name, (shape, dtype) in shapes.items():
        n = sizes[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)
    return offset
