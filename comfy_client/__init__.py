"""A client of a running ComfyUI server: workflow formats (UI <-> API, ``graph``) and
submitting a workflow, following its progress and downloading its outputs (``client``).

May import: ``core``."""
