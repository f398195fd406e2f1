"""What a run writes: the run directory (config, log, loss chart), resumable checkpoints, and
the exported LoRA / DreamBooth model.

May import: ``core``, ``models``."""
