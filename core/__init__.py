"""The foundation every other package builds on: the config base (typed fields, unknown keys
rejected, errors naming the field), lazy optional imports, the cache root, the weights registry
and lookup, the one probe of ComfyUI's model folders (``host``), image conversions between
ComfyUI tensors and numpy, text tables, the OpenCLIP loader, and host-to-GPU copies that
never make the host wait (``transfer``).

May import: nothing of the pack (only the standard library and its dependencies)."""
