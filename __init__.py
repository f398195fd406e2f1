"""Persona: personalized image generation for ComfyUI.

Registration only: ComfyUI reads the three names below. Everything else lives in the
headless subpackages (faces, trainers, generation, metrics) and the thin node adapters.
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web/js"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
