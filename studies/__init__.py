"""Studies, not single runs: hyperparameter sweeps and training regimes side by side
(``sweep``), run as training subprocesses and measured on their validation samples.

May import: ``core``, ``faces``, ``trainers``, ``metrics``. Imported by ``app`` (``persona sweep``).
"""
