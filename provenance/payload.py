"""The watermark payloads: what an image made by Persona carries in its pixels.

**RivaGAN** (the mark Persona embeds, 32 bits; ``watermark``):

| bits  | field      | value                                                        |
| ----- | ---------- | ------------------------------------------------------------ |
| 0-15  | pack id    | :data:`PACK_ID` (16 bits): the image was made by Persona       |
| 16-23 | LoRA hash  | the first 8 bits of the LoRA file's SHA-256 (0: no LoRA)     |
| 24-31 | seed       | the sampling seed modulo 256                                 |

**DWT-DCT** (what images made before carry, 48 bits; still read): an 8-bit pack id 0x50, the
first 24 bits of the LoRA hash, the seed modulo 65536.

Bits are most significant first. The full hashes and seed are in the file's metadata; the
watermark is what survives when the metadata is stripped, so it carries enough to say "Persona
made this", and fragments that tell which LoRA and seed are likely.
"""
from __future__ import annotations

from dataclasses import dataclass

BITS = 32
PACK_ID = 0xA5C3  # 1010 0101 1100 0011: balanced, and far from what unmarked photos read as
PACK_ID_BITS = 16
LEGACY_BITS = 48
LEGACY_MAGIC = 0x50


def _to_bits(value: int, width: int) -> list[int]:
    return [(value >> (width - 1 - i)) & 1 for i in range(width)]


def _from_bits(bits) -> int:
    value = 0
    for b in bits:
        value = (value << 1) | int(b)
    return value


def _errors(bits, value: int, width: int) -> int:
    return bin(_from_bits(bits[:width]) ^ value).count("1")


@dataclass(frozen=True)
class Payload:
    lora_hash: str = ""  # hex; the mark carries its first 2 digits (legacy marks: 6)
    seed: int = 0

    @property
    def lora_prefix(self) -> str:
        return (self.lora_hash[:2] or "00").lower()

    def bits(self) -> list[int]:
        return (_to_bits(PACK_ID, PACK_ID_BITS) + _to_bits(int(self.lora_prefix, 16), 8)
                + _to_bits(self.seed % 256, 8))

    @classmethod
    def from_bits(cls, bits) -> tuple["Payload", int]:
        """(payload, number of pack-id bits that differ from Persona's)."""
        bits = [int(b) for b in bits]
        if len(bits) != BITS:
            raise ValueError(f"payload: {BITS} bits expected, got {len(bits)}")
        lora = _from_bits(bits[16:24])
        return cls("" if lora == 0 else f"{lora:02x}", _from_bits(bits[24:])), _errors(bits, PACK_ID, PACK_ID_BITS)

    def legacy_bits(self) -> list[int]:
        """The 48 bits of a DWT-DCT mark (images made before RivaGAN)."""
        prefix = (self.lora_hash[:6] or "000000").lower()
        return _to_bits(LEGACY_MAGIC, 8) + _to_bits(int(prefix, 16), 24) + _to_bits(self.seed % 65536, 16)

    @classmethod
    def from_legacy_bits(cls, bits) -> tuple["Payload", int]:
        """A DWT-DCT mark's payload and the number of its 8 pack-id bits that differ."""
        bits = [int(b) for b in bits]
        if len(bits) != LEGACY_BITS:
            raise ValueError(f"payload: {LEGACY_BITS} bits expected, got {len(bits)}")
        lora = _from_bits(bits[8:32])
        return cls("" if lora == 0 else f"{lora:06x}", _from_bits(bits[32:])), _errors(bits, LEGACY_MAGIC, 8)

    def to_json(self, legacy: bool = False) -> dict:
        if legacy:
            return {"pack": "persona", "lora_hash_prefix": (self.lora_hash[:6].lower() if self.lora_hash else ""),
                    "seed_mod_65536": self.seed % 65536}
        return {"pack": "persona", "lora_hash_prefix": self.lora_prefix if self.lora_hash else "",
                "seed_mod_256": self.seed % 256}


def agreement(bits, expected: list[int]) -> int:
    """How many of ``bits`` equal ``expected``."""
    return sum(int(a) == int(b) for a, b in zip(bits, expected))
