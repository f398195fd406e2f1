"""Identity-gated generation and identity-safe enhancement, headless: the gate loop over any
``generate(params)`` callable (one subject, or a group of subjects in one picture), enhancement steps with a drift check, and a diffusers generator.

May import: ``core``, ``faces``, ``models``."""
