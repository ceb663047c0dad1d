"""Running the app under uvicorn: the bind rules, a socket opened before the log line, a clean stop."""
from __future__ import annotations

import ipaddress
import signal
import socket
import threading
from types import FrameType
from typing import Any, Callable, Optional

from ..errors import BrcdError


def is_loopback(host: str) -> bool:
    """Whether ``host`` only reaches this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: Optional[str], insecure: bool) -> None:
    """Refuse to expose the collection beyond this machine without a token, unless told to."""
    if not is_loopback(host) and token is None and not insecure:
        raise BrcdError(f"--host {host} is reachable from other machines: give --token (or BRCD_TOKEN), "
                        "or --insecure to serve without one")


def open_socket(host: str, port: int) -> socket.socket:
    """A listening socket, so the address (an ephemeral port with --port 0) is known before serving starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say they are TCP, and
    # without that every answer on a kept-alive connection waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise BrcdError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    return sock


def server_for(app: Any, sock: socket.socket) -> Any:
    """A uvicorn server for ``app`` on ``sock`` (quiet: the CLI says what it serves; errors still show)."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5, lifespan="off")
    return uvicorn.Server(config)


class _Stopped(Exception):
    """A stop signal, turned into a return from :func:`run_server`."""


def _stop(signum: int, frame: Optional[FrameType]) -> None:
    raise _Stopped(signum)


def run_server(app: Any, host: str, port: int, log: Callable[[str], None] = print) -> None:
    """Serve until SIGINT or SIGTERM, then return (exit status 0 from the CLI).

    uvicorn takes both signals while it serves, lets the requests in flight
    finish, and then raises the signal again for whoever handled it before:
    here that is :func:`_stop`, so a stop request ends serving instead of the
    process (SIGTERM's default) or turning into a KeyboardInterrupt.
    """
    sock = open_socket(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
    log(f"serving at http://{shown}:{bound_port}/ (Ctrl-C stops)")
    try:
        server_for(app, sock).run(sockets=[sock])
    except _Stopped:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    log("stopped")
