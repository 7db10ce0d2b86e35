"""Run the Salesforce sandbox: certificates, storage, optional seeding, then HTTPS (sandboxes/serving.py) and,
on the same event loop, the Pub/Sub API's gRPC server (pubsub.py).

Two banner lines are printed once each socket is bound, so `--port 0` / `--pubsub-port 0` work:
    Salesforce sandbox: https://127.0.0.1:PORT  (CA: path)
    Salesforce Pub/Sub API: 127.0.0.1:PORT
"""
from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Sequence

from sandboxes.serving import WILDCARD_HOSTS, bracket, prepare_tls, serve_https, setup_logging

from .app import build_app, create_sandbox
from .pubsub import BANNER as PUBSUB_BANNER
from .pubsub import pubsub_server
from .settings import DEFAULT_ADMIN_TOKEN, DEFAULT_CREDENTIALS, DEFAULT_RETENTION_SECONDS, DEFAULT_STATE_DIR, Credentials

BANNER = "Salesforce sandbox: "
URI_LIMIT_SLACK = 1024 * 1024  # h11 must read long request lines so wire.py can answer 414 like Salesforce


@dataclass(frozen=True)
class StreamingOptions:
    """Change Data Capture and the Pub/Sub API's listener."""
    pubsub_port: int = 7443  # Salesforce's Pub/Sub endpoint is api.pubsub.salesforce.com:7443
    pubsub_keepalive_seconds: float = 270.0
    cdc_objects: Sequence[str] | None = None  # None: keep the stored selection (default Contact, Account, …)
    cdc_retention_seconds: int = DEFAULT_RETENTION_SECONDS
    cometd_timeout_seconds: float = 110.0


def serve(host: str = "127.0.0.1", port: int = 8443, state_dir: Path = DEFAULT_STATE_DIR, seed_contacts: int = 0,
          tls_names: Sequence[str] = (), credentials: Credentials = DEFAULT_CREDENTIALS,
          admin_token: str = DEFAULT_ADMIN_TOKEN, log_level: str = "info",
          streaming: StreamingOptions = StreamingOptions()) -> None:
    """Serve until interrupted. Seeding happens only into an empty store, so re-running is harmless."""
    setup_logging(log_level)
    tls = prepare_tls(Path(state_dir), host, tls_names)
    sandbox = create_sandbox(Path(state_dir), credentials, admin_token,
                             cdc_objects=list(streaming.cdc_objects) if streaming.cdc_objects is not None else None,
                             cdc_retention_seconds=streaming.cdc_retention_seconds)
    sandbox.cometd_timeout_seconds = streaming.cometd_timeout_seconds
    if seed_contacts:
        started = time.monotonic()
        added = sandbox.store.seed_contacts(seed_contacts, user_id=sandbox.api_user_id)
        note = f"seeded {added} contacts in {time.monotonic() - started:.1f} s" if added else \
            "seeding skipped: the store already holds contacts"
        print(note, flush=True)
    logging.getLogger("crmsync.sandbox.salesforce").info("API user: %s", credentials.username)

    @asynccontextmanager
    async def grpc_alongside() -> AsyncIterator[None]:
        grpc_host = "0.0.0.0" if host in WILDCARD_HOSTS else host
        async with pubsub_server(sandbox, host=bracket(grpc_host), port=streaming.pubsub_port, cert=tls.cert,
                                 key=tls.key, keepalive_seconds=streaming.pubsub_keepalive_seconds) as bound:
            shown = "127.0.0.1" if host in WILDCARD_HOSTS else host
            sandbox.pubsub_address = f"{bracket(shown)}:{bound}"
            print(f"{PUBSUB_BANNER}{sandbox.pubsub_address}", flush=True)
            yield

    def close() -> None:
        sandbox.worker.close()
        sandbox.store.close()

    serve_https(build_app(sandbox), host=host, port=port, tls=tls, banner=BANNER, on_close=close,
                uvicorn_options={"http": "h11", "server_header": False, "date_header": False,
                                 "h11_max_incomplete_event_size": URI_LIMIT_SLACK},
                alongside=grpc_alongside)
