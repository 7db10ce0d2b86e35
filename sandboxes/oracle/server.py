"""Run the Oracle CRM On Demand sandbox: certificates, storage, optional seeding, then HTTPS
(sandboxes/serving.py)."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

from sandboxes.control import DEFAULT_ADMIN_TOKEN
from sandboxes.serving import prepare_tls, serve_https, setup_logging

from .app import build_app, create_sandbox
from .seed import seed_contacts
from .settings import DEFAULT_CREDENTIALS, DEFAULT_TIMEZONE, Credentials

DEFAULT_STATE_DIR = Path(".crmsync/sandboxes/oracle")
BANNER = "Oracle CRM On Demand sandbox: "


def serve(host: str = "127.0.0.1", port: int = 8445, state_dir: Path = DEFAULT_STATE_DIR, seed: int = 0,
          tls_names: Sequence[str] = (), credentials: Credentials = DEFAULT_CREDENTIALS,
          user_timezone: str = DEFAULT_TIMEZONE, admin_token: str = DEFAULT_ADMIN_TOKEN,
          log_level: str = "info") -> None:
    """Serve until interrupted. Seeding happens only into an empty store, so re-running is harmless."""
    setup_logging(log_level)
    tls = prepare_tls(Path(state_dir), host, tls_names)
    sandbox = create_sandbox(Path(state_dir), credentials, user_timezone, admin_token)
    if seed:
        started = time.monotonic()
        added = seed_contacts(sandbox.store, seed, user_id=sandbox.user_id)
        note = f"seeded {added} contacts and {max(1, added // 5)} accounts in {time.monotonic() - started:.1f} s" \
            if added else "seeding skipped: the store already holds contacts"
        print(note, flush=True)
    logging.getLogger("crmsync.sandbox.oracle").info("API user: %s, time zone %s", credentials.username,
                                                     sandbox.zone.key)
    serve_https(build_app(sandbox), host=host, port=port, tls=tls, banner=BANNER, on_close=sandbox.store.close)
