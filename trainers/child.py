"""Entry of a training child process (the Train node's), run by file path:

    python <pack>/trainers/child.py CONFIG --json-events

Inside ComfyUI the pack is imported under its folder name and is usually not installed
with pip, so this file loads the pack from its folder as ``comfyui_persona`` first.
"""
import importlib.util
import sys
from pathlib import Path


def _import_pack():
    if "comfyui_persona" in sys.modules:
        return
    try:
        import comfyui_persona  # noqa: F401  (installed with pip)
        return
    except ImportError:
        pass
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("comfyui_persona", root / "__init__.py",
                                                  submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["comfyui_persona"] = module
    spec.loader.exec_module(module)


if __name__ == "__main__":
    import gc

    # Importing torch, diffusers and the pack makes about half a million objects that live as long
    # as the process; the cyclic collector would walk them again and again while they are made
    # (about half a second of a 7 s training child on a 2-core CPU). Off while importing, then
    # those objects are left out of its walks (gc.freeze); what the training makes is collected.
    gc.disable()
    _import_pack()
    from comfyui_persona.trainers.entry import main
    gc.freeze()
    gc.enable()

    sys.exit(main(sys.argv[1:]))
