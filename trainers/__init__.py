"""Training, headless: the one config of a run (``config``), the one entry that turns a config
into a run and events (``entry``, ``events``; ``python -m comfyui_persona.trainers``), the
loop in named phases (``loop``), memory techniques and the planner (``memory``), what a run
writes (``outputs``), and the child process the ComfyUI node trains in (``subprocess_run``,
``child``). What differs between model families is asked of ``models.families``.

May import: ``core``, ``models``, ``faces``."""
