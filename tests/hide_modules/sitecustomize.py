"""Makes the packages named in PERSONA_HIDE_MODULES (comma-separated) impossible to import,
as if they were not installed: used to start ComfyUI without an optional dependency."""
import os
import sys
from importlib.abc import MetaPathFinder

_HIDDEN = {m.strip() for m in os.environ.get("PERSONA_HIDE_MODULES", "").split(",") if m.strip()}


class _Hide(MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in _HIDDEN:
            raise ModuleNotFoundError(f"No module named '{fullname}'", name=fullname)
        return None


if _HIDDEN:
    sys.meta_path.insert(0, _Hide())
