"""Load an optional backend once, thread-safely, keeping it or the one-line reason it cannot be used.

Every backend registry (kernels/_registry.py) probes its backends lazily and
reports why one is missing (`brcd info`), and the loss op registers itself the
same way; this is that step, written once, with the version check every
compiled extension gets.
"""
from __future__ import annotations

import importlib
import threading
from types import ModuleType
from typing import Any, Callable, Union


def one_line_reason(exc: BaseException) -> str:
    """``Type: message`` on one line, whitespace collapsed."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def load_once(name: str, loader: Callable[[], Any], loaded: dict[str, Any], status: dict[str, str],
              lock: Union[threading.Lock, threading.RLock]) -> None:
    """Run ``loader`` for ``name`` unless done before: loaded[name] = its result, status[name] = "available" or why not."""
    if name in status:
        return
    with lock:
        if name in status:
            return
        try:
            result = loader()
        except Exception as exc:  # noqa: BLE001 - any failure means "not available", with the reason
            status[name] = one_line_reason(exc)
        else:
            loaded[name] = result
            status[name] = "available"


def import_extension(module: str, api_version: int) -> ModuleType:
    """Import a compiled extension, refusing a stale build left by an older checkout instead of half-running it."""
    mod = importlib.import_module(module)
    found = getattr(mod, "API_VERSION", None)
    if found != api_version:
        raise ImportError(
            f"{module} is a stale build (API {found}, need {api_version}); "
            "rebuild with `pip install -e . --no-build-isolation`"
        )
    return mod
