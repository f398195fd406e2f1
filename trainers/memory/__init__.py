"""Training memory: the techniques as small switchable functions (``techniques``), a quantized
frozen base (``quantize``), per-block selective checkpointing and block streaming
(``blocks``), the optimizer step one tensor at a time, fused into backward or with bf16
weights and stochastic rounding (``per_tensor``), a training step simulated on the ``meta``
device to predict a plan's peak (``simulate``), and the planner that picks the fastest plan
that fits (``planner``).

May import: ``core``, ``models``, ``trainers.loop.setup`` / ``trainers.loop.step`` (the
simulation runs the loop's own setup and step)."""
