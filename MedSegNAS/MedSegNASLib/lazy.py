"""Names of a package that import their module on first use (PEP 562).

A package's ``__init__`` lists what it exports per sub-module; importing the package (or one
sub-module, such as a command's registration) then loads none of the others' heavy dependencies
(nibabel, SimpleITK, torch, matplotlib...) until a name is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any


def lazy_exports(
    package: str, namespace: MutableMapping[str, Any], exports: Mapping[str, Sequence[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, names)`` for ``package`` whose globals are ``namespace``.

    Args:
        package: the package's ``__name__``.
        namespace: its ``globals()``; a name, once imported, is stored there.
        exports: sub-module name -> the names it exports.
    """
    module_of = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:  # noqa: N807 (the module-level hook's name)
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module_of[name]}", package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:  # noqa: N807
        return sorted(set(namespace) | set(namespace.get("__all__", ())) | set(module_of))

    return __getattr__, __dir__, sorted(module_of)
