"""Load an optional backend once, thread-safely, keeping it or the one-line reason it cannot be used.

The CPU dispatcher (native, numba, reference) and the GPU one (CUDA
extension, CuPy, torch) both probe backends lazily and report why one is
missing (`brcd info`); this is that step, written once.
"""
from __future__ import annotations

import threading
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
