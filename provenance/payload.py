"""The watermark payload: 48 bits, so it survives the DWT-DCT embedding of 256 px images.

| bits  | field      | value                                                        |
| ----- | ---------- | ------------------------------------------------------------ |
| 0-7   | pack id    | 0x50 ('P'): the image was made by Persona                    |
| 8-31  | LoRA hash  | the first 24 bits of the LoRA file's SHA-256 (0: no LoRA)    |
| 32-47 | seed       | the sampling seed modulo 65536                               |

Bits are most significant first. The full hashes and seed are in the file's metadata; the
watermark is what survives when the metadata is stripped.
"""
from __future__ import annotations

from dataclasses import dataclass

MAGIC = 0x50
BITS = 48


def _to_bits(value: int, width: int) -> list[int]:
    return [(value >> (width - 1 - i)) & 1 for i in range(width)]


def _from_bits(bits) -> int:
    value = 0
    for b in bits:
        value = (value << 1) | int(b)
    return value


@dataclass(frozen=True)
class Payload:
    lora_hash: str = ""  # hex; only its first 6 digits are carried
    seed: int = 0

    @property
    def lora_prefix(self) -> str:
        return (self.lora_hash[:6] or "000000").lower()

    def bits(self) -> list[int]:
        return _to_bits(MAGIC, 8) + _to_bits(int(self.lora_prefix, 16), 24) + _to_bits(self.seed % 65536, 16)

    @classmethod
    def from_bits(cls, bits) -> tuple["Payload", int]:
        """(payload, number of pack-id bits that differ from Persona's)."""
        bits = [int(b) for b in bits]
        if len(bits) != BITS:
            raise ValueError(f"payload: {BITS} bits expected, got {len(bits)}")
        magic_errors = bin(_from_bits(bits[:8]) ^ MAGIC).count("1")
        lora = _from_bits(bits[8:32])
        return cls("" if lora == 0 else f"{lora:06x}", _from_bits(bits[32:])), magic_errors

    def to_json(self) -> dict:
        return {"pack": "persona", "lora_hash_prefix": self.lora_prefix if self.lora_hash else "",
                "seed_mod_65536": self.seed % 65536}


def bit_accuracy(bits, expected: Payload) -> float:
    want = expected.bits()
    return sum(int(a) == b for a, b in zip(bits, want)) / len(want)
