"""``python -m comfyui_persona.trainers CONFIG [...]`` = ``persona train CONFIG [...]``.

This is the entry for data-parallel training:
``accelerate launch --num_processes 2 -m comfyui_persona.trainers config.yaml``.
"""
import sys

from ..cli import main

sys.exit(main(["train", *sys.argv[1:]]))
