"""Training speed: the speed switches of a run (regional compilation, CUDA graphs,
channels-last; ``switches``) and speed measured as model-FLOPs utilisation
(``utilisation``: FLOPs per step counted on the ``meta`` device, the device's peak).

May import: ``core``, ``models``, ``trainers.memory`` (the utilisation count runs the
memory simulation's step)."""
