"""``python -m comfyui_persona.trainers CONFIG [...]``: the headless training entry.

Also the entry for data-parallel training:
``accelerate launch --num_processes 2 -m comfyui_persona.trainers config.yaml``.
"""
import sys

from .entry import main

sys.exit(main(sys.argv[1:]))
