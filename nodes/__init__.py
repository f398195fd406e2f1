"""ComfyUI adapters: thin node classes that parse widgets, build a config, call one headless
function and return a tuple. The only package that talks to ComfyUI, and only through
``host``.

May import: every package of the pack except ``app``.

Each module lists its nodes in ``NODES`` (id -> (class, display name)). Node ids are
stable: a changed node gets a new id (``...V2``) and the old one keeps working.

Every node runs confined (``host.confinement``): each path its values yield, however they
arrive, must lie in ComfyUI's folders, and its error messages name those folders by label,
never by their location on the server.
"""
import functools

from . import face_nodes, generate_nodes, host, metrics_nodes, plan_nodes, save_nodes, study_nodes, train_nodes

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
host.keep_caches_in_comfyui()


_PACK = __name__.rsplit(".", 1)[0]  # the pack's module prefix (a host may name it by its folder's path)


def _scrubbed(exc: Exception) -> Exception:
    """``exc`` as the server may show it: its message scrubbed of the server's locations and,
    for the pack's own exception types (whose qualified name a host builds from the pack's
    folder path), the nearest built-in type; the host's exceptions (its interrupt) untouched."""
    from ..core.confine import scrub

    text = str(exc)
    clean = scrub(text)
    kind = type(exc)
    if kind.__module__.startswith(_PACK):
        kind = next(k for k in kind.__mro__ if k.__module__ == "builtins")
    elif clean == text:
        return exc
    try:
        return kind(clean)
    except Exception:  # an exception type that cannot be rebuilt from a message
        return RuntimeError(clean)


def _confined(method):
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with host.confinement():
            try:
                return method(self, *args, **kwargs)
            except Exception as exc:
                from ..core.confine import active

                if active() is None:  # outside ComfyUI (or any path allowed): as raised
                    raise
                clean = _scrubbed(exc)
                if clean is exc:
                    raise
                raise clean from None
    run.__persona_confined__ = True
    return run


for _module in (face_nodes, train_nodes, study_nodes, plan_nodes, generate_nodes, save_nodes, metrics_nodes):
    for _id, (_cls, _title) in _module.NODES.items():
        _method = getattr(_cls, _cls.FUNCTION)
        if not getattr(_method, "__persona_confined__", False):
            setattr(_cls, _cls.FUNCTION, _confined(_method))
        NODE_CLASS_MAPPINGS[_id] = _cls
        NODE_DISPLAY_NAME_MAPPINGS[_id] = _title
