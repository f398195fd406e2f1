"""Makes the packages named in PERSONA_HIDE_MODULES (comma-separated) impossible to import,
as if they were not installed: used to start ComfyUI without an optional dependency, and to
run Persona without the Unix-only modules that Windows lacks.

PERSONA_HIDE_ONLY_FROM (comma-separated packages, "__main__" for a script) limits the hiding to
the imports those packages make: libraries such as psutil or huggingface_hub import Unix
modules on Linux only, behind their own platform checks, and take their Windows branch there,
so the question for Persona's code is whether *it* needs them."""
import os
import sys
from importlib.abc import MetaPathFinder

_HIDDEN = {m.strip() for m in os.environ.get("PERSONA_HIDE_MODULES", "").split(",") if m.strip()}
_ONLY_FROM = {m.strip() for m in os.environ.get("PERSONA_HIDE_ONLY_FROM", "").split(",") if m.strip()}


def _importer() -> str:
    """The module whose import statement is running (the first frame outside the import system)."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if not name.startswith(("importlib", "_frozen_importlib")) and name != __name__:
            return name
        frame = frame.f_back
    return ""


class _Hide(MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in _HIDDEN:
            if not _ONLY_FROM or _importer().split(".")[0] in _ONLY_FROM:
                raise ModuleNotFoundError(f"No module named '{fullname}'", name=fullname)
        return None


if _HIDDEN:
    sys.meta_path.insert(0, _Hide())
