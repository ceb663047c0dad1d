"""One registry of backends per dispatch: preference order, the variable that forces one, why one is missing.

The CPU dispatch (native > numba > reference), the GPU dispatch (cuda > cupy >
torch) and the lookup dispatch (native > reference) answer the same
questions: which backends exist, which one runs now, why one cannot. Each is a
:class:`BackendRegistry`, so the environment variable is read, an unknown
name refused and a missing backend explained in the same words everywhere,
and ``brcd info`` can show all three the same way.

Backends load lazily, once, on first use (importing a registry loads
nothing); a backend that fails to load keeps its one-line reason. The
environment variable is read on every selection, so a test or a user can
switch backends without restarting the process.

Asking for what a dispatch cannot give (a name it does not know, a backend
that cannot run here) raises a :class:`BackendError`: the CLI shows it as one
line whichever command met it, and the server refuses to start on it.
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

from ._loading import load_once

AUTO = "auto"


class BackendError(Exception):
    """A dispatch was asked for something it cannot give; the message is one line naming the variable and the choices.

    The native extensions raise their own choices (``BRCD_SIMD``,
    ``BRCD_AVX2_STEP``) as :class:`ChoiceError` too, so one ``except`` covers
    every dispatch.
    """


class ChoiceError(BackendError, ValueError):
    """A backend, SIMD path or shape name the dispatch does not have, or one this machine cannot run."""


class UnavailableError(BackendError, RuntimeError):
    """The backend asked for (or every backend) cannot be used here; the message says why."""


class BackendRegistry:
    """Named backends of one dispatch, in order of preference, each with a loader run at most once.

    ``kind`` names the dispatch in messages ("unknown GPU backend ..."). A
    ``precondition`` says why no backend can run at all (no CUDA device
    visible) or returns None; it is asked on every selection and report.
    """

    def __init__(
        self,
        kind: str,
        env_var: str,
        loaders: Mapping[str, Callable[[], Any]],
        precondition: Optional[Callable[[], Optional[str]]] = None,
    ) -> None:
        self.kind = kind
        self.env_var = env_var
        self.names: tuple[str, ...] = tuple(loaders)
        self._loaders = dict(loaders)
        self._precondition = precondition
        self._lock = threading.Lock()
        self._loaded: dict[str, Any] = {}
        self._status: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"BackendRegistry({self.kind!r}, {self.env_var!r}, {' > '.join(self.names)})"

    # -- probing -------------------------------------------------------------------------------------------

    def loaded(self, name: str) -> Optional[Any]:
        """What the backend's loader returned (loading it on first call), or None when it cannot be used."""
        load_once(name, self._loaders[name], self._loaded, self._status, self._lock)
        return self._loaded.get(name)

    def status(self, name: str) -> str:
        """"available", or the one-line reason the backend's loader failed."""
        self.loaded(name)
        return self._status[name]

    def blocked(self) -> Optional[str]:
        """Why no backend can run now (the precondition's answer), or None."""
        return self._precondition() if self._precondition is not None else None

    def available(self) -> dict[str, str]:
        """Backend name -> "available" or why it cannot be used, in order of preference.

        When the precondition fails every backend says why first, then whether
        the backend itself loaded, so a build without a device still shows
        what was built.
        """
        reason = self.blocked()
        out = {}
        for name in self.names:
            state = self.status(name)
            out[name] = state if reason is None else f"{reason} ({'backend loaded' if state == 'available' else state})"
        return out

    # -- selecting -----------------------------------------------------------------------------------------

    def _source(self, backend: Optional[str]) -> str:
        return "backend argument" if backend is not None else f"environment variable {self.env_var}"

    def requested(self, backend: Optional[str] = None) -> Optional[str]:
        """The backend asked for by the argument, else the environment variable; None for auto (unset, "" or "auto")."""
        raw = backend if backend is not None else os.environ.get(self.env_var, "")
        name = raw.strip().lower()
        if name in ("", AUTO):
            return None
        if name not in self._loaders:
            raise ChoiceError(
                f"unknown {self.kind} backend {name!r} (from the {self._source(backend)}); "
                f"choose one of {', '.join(self.names)} or {AUTO}"
            )
        return name

    def first_available(self, names: Iterable[str]) -> Optional[tuple[str, Any]]:
        """The first of ``names`` that loads, with what it loaded, or None."""
        for name in names:
            obj = self.loaded(name)
            if name in self._loaded:
                return name, obj
        return None

    def select(self, backend: Optional[str] = None) -> tuple[str, Any]:
        """(name, loaded object) of the backend to run: the one requested, else the first that loads.

        A requested backend that cannot be used is an error, never a silent
        fallback: the caller asked for it by name.
        """
        name = self.requested(backend)
        reason = self.blocked()
        if reason is not None:
            raise UnavailableError(f"no {self.kind} backend can run: {reason}")
        if name is None:
            chosen = self.first_available(self.names)
            if chosen is None:
                raise UnavailableError(f"no {self.kind} backend could be loaded: {self._status}")
            return chosen
        obj = self.loaded(name)
        if name not in self._loaded:
            raise UnavailableError(
                f"{self.kind} backend {name!r} was requested by the {self._source(backend)} "
                f"but is not available: {self._status[name]}"
            )
        return name, obj

    def active(self) -> Optional[str]:
        """The backend a call would use now (honours the environment variable), or None when the precondition fails."""
        if self.blocked() is not None:
            return None
        return self.select(None)[0]

    @contextmanager
    def forced(self, name: str) -> Iterator[None]:
        """The environment variable set to ``name`` for the duration, then restored (benchmarks compare backends in one run)."""
        if name not in self._loaders and name != AUTO:
            raise ChoiceError(f"{self.env_var} takes {', '.join(self.names)} or {AUTO}, not {name!r}")
        before = os.environ.get(self.env_var)
        os.environ[self.env_var] = name
        try:
            yield
        finally:
            if before is None:
                os.environ.pop(self.env_var, None)
            else:
                os.environ[self.env_var] = before
