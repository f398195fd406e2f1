"""Diffusion models: the components a trainer or sampler uses (``components``), one module
per model family (``families``: loading, tokenizers, objective, sampling, LoRA key layout),
architectures at test and published size (``architectures``), random-weight model folders
(``build``), the demo's tiny model with shipped weights that draw faces (``tiny_faces``,
weights in ``weights/tiny_faces``), single-file checkpoints and the key layouts of other tools (``keys``).

May import: ``core``."""
