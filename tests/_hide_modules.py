"""A ``sitecustomize.py`` that makes packages look uninstalled, for subprocess tests.

``write_sitecustomize(folder, blocked)`` writes it; put ``folder`` first on the
subprocess's ``PYTHONPATH``. It wraps every ``sys.meta_path`` finder so that the blocked
top-level names are not found (``import`` raises ``ModuleNotFoundError``,
``importlib.util.find_spec`` returns None) and forgets any already imported.
"""

import textwrap
from pathlib import Path

_TEMPLATE = textwrap.dedent(
    """
    import sys

    BLOCKED = {blocked!r}


    class _Hide:
        def __init__(self, inner):
            self._inner = inner

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                return None
            find = getattr(self._inner, "find_spec", None)
            return None if find is None else find(name, path, target)

        def __getattr__(self, attr):
            return getattr(self._inner, attr)


    for _m in [m for m in sys.modules if m.split(".")[0] in BLOCKED]:
        del sys.modules[_m]
    sys.meta_path[:] = [_Hide(f) for f in sys.meta_path]
    """
)


def write_sitecustomize(folder, blocked) -> Path:
    """Writes ``folder/sitecustomize.py`` hiding the packages ``blocked``; returns its path."""
    path = Path(folder) / "sitecustomize.py"
    path.write_text(_TEMPLATE.format(blocked=tuple(blocked)))
    return path
