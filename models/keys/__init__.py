"""Key layouts shared by families: kohya's LoRA names from peft's adapters (``kohya``) and the
original (LDM) single-file layout of SD1.x / SDXL UNets, VAEs and CLIP (``ldm``).

May import: ``core``."""
