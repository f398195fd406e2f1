"""The applications on top of the library: the ``persona`` command line (``cli``) and the
whole-pipeline demo on the embedded sample faces (``demo``). Nothing imports this package.

May import: every package of the pack except ``nodes``."""
