"""How every crmsync sandbox is served: HTTPS only, a certificate from the shared local CA, a socket bound
before the banner is printed.

State lives in `state_dir` (one directory per sandbox). The CA that signs the server certificates lives one
level up (`state_dir.parent/ca.pem`, i.e. `.crmsync/sandboxes/ca.pem` by default), so every sandbox is trusted
through one file (`crmsync sandbox ca`).

The listening socket is bound before the banner is printed, so `--port 0` works: the banner names the port the
OS picked, and by the time it is printed connections are already queued rather than refused. Tests and
`crmsync run` read the URL from the banner line (`<name> sandbox: https://host:port  (CA: path)`).
"""
from __future__ import annotations

import asyncio
import logging
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncContextManager, Callable, Mapping, Sequence

import uvicorn
from starlette.types import ASGIApp

from crmsync.tls import ensure_ca, issue_server_cert

WILDCARD_HOSTS = ("", "0.0.0.0", "::")


@dataclass(frozen=True)
class Tls:
    """The certificate files a sandbox serves with, and the CA that signed them."""

    ca: Path
    cert: Path
    key: Path


def setup_logging(log_level: str) -> None:
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)


def prepare_tls(state_dir: Path, host: str, tls_names: Sequence[str] = ()) -> Tls:
    """Create `state_dir`, the shared CA (once) and this sandbox's server certificate for `host` + `tls_names`."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    ca_path = ensure_ca(state_dir.parent)
    names = [*tls_names, *([] if host in WILDCARD_HOSTS else [host])]
    cert, key = issue_server_cert(state_dir.parent, names, out_dir=state_dir)
    return Tls(ca_path, cert, key)


def serve_https(app: ASGIApp, *, host: str, port: int, tls: Tls, banner: str,
                on_close: Callable[[], None] = lambda: None, graceful_seconds: int = 5,
                uvicorn_options: Mapping[str, Any] | None = None,
                alongside: Callable[[], AsyncContextManager[None]] | None = None) -> None:
    """Bind, print `banner` + the URL and the CA path, then serve `app` over HTTPS until interrupted.
    `uvicorn_options` adds uvicorn.Config settings; `alongside` runs other servers (e.g. gRPC) on the same
    event loop for as long as HTTPS is served."""
    sock = listen(host, port)
    shown = "127.0.0.1" if host in WILDCARD_HOSTS else host
    print(f"{banner}https://{bracket(shown)}:{sock.getsockname()[1]}  (CA: {tls.ca.resolve()})", flush=True)
    config = uvicorn.Config(app, ssl_certfile=str(tls.cert), ssl_keyfile=str(tls.key), lifespan="off",
                            access_log=False, log_level="warning", timeout_graceful_shutdown=graceful_seconds,
                            **dict(uvicorn_options or {}))
    server = uvicorn.Server(config)

    async def run() -> None:
        if alongside is None:
            await server.serve(sockets=[sock])
            return
        async with alongside():
            await server.serve(sockets=[sock])

    try:
        asyncio.run(run())
    finally:
        on_close()


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host or "0.0.0.0", port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host

