"""Import-time costs that a short-lived CLI should not pay.

paramiko imports ``invoke`` at load time, only to run ssh_config's rarely used ``Match exec``;
loading invoke (and the YAML parser, asyncio and unittest.mock it pulls in) takes about as long
as loading paramiko itself. A placeholder module defers that cost to the first real use.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any


class _Deferred(types.ModuleType):
    """Stands in for a module in sys.modules; the first attribute lookup imports the real one."""

    def __getattr__(self, attr: str) -> Any:  # only called for attributes the stub lacks
        real = self.__dict__.get("_deferred_real")
        if real is None:
            if sys.modules.get(self.__name__) is self:
                del sys.modules[self.__name__]
            real = importlib.import_module(self.__name__)
            self.__dict__["_deferred_real"] = real
        return getattr(real, attr)


def defer_import(name: str) -> None:
    """Let `import name` succeed at once; the module loads when something first uses it."""
    if name not in sys.modules and importlib.util.find_spec(name) is not None:
        sys.modules[name] = _Deferred(name)
