"""Lazy package attributes: ``from anomaly_bench import CRAD`` without importing every method.

A package lists ``{attribute: module}``; the module is imported on first access (PEP 562
``__getattr__``), so importing a torch model never pulls in Lightning, and the CLI's start-up does
not pay for methods it does not run.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` exporting ``{name: module path}``."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
