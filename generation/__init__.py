"""Identity-gated generation and identity-safe enhancement, headless: the gate loop over any
``generate(params)`` callable, enhancement steps with a drift check, and a diffusers generator.

May import: ``core``, ``faces``, ``models``."""
