"""External CRM accounts stored in the Campaign database, secrets encrypted at rest (Fernet).

Why in the database: like Adobe Campaign's external accounts, every service and operator sees the same
accounts without shipping a YAML file around. Why encrypted: a database dump must not leak CRM credentials; the
key lives outside the database (env `CRMSYNC_SECRET_KEY`, else `<state_dir>/secret.key`, created once, 0600).
Accounts from crmsync.yaml keep working and are listed too (source "file"); the database wins on a name clash
only if someone forces it, `add` refuses names the file already uses.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from pydantic import TypeAdapter, ValidationError

from crmsync import pg
from crmsync.config import Account, Settings

KEY_ENV = "CRMSYNC_SECRET_KEY"
KEY_FILE = "secret.key"
_ADAPTER: TypeAdapter[Any] = TypeAdapter(Account)


class AccountError(Exception):
    """A problem with an account, phrased for the user and free of secrets."""


@dataclass
class StoredAccount:
    name: str
    account: Any  # a config.Account (SalesforceAccount today)
    source: str  # "database" | "file"
    configured: bool


def secret_fields(account: Any) -> list[str]:
    """Fields typed SecretStr (set or not): what is encrypted at rest and masked on output."""
    return [name for name, f in type(account).model_fields.items() if "SecretStr" in str(f.annotation)]


def fernet(state_dir: Path) -> Fernet:
    """The cipher: from $CRMSYNC_SECRET_KEY, else the key file, generated once with mode 0600."""
    if os.environ.get(KEY_ENV):
        return Fernet(os.environ[KEY_ENV].encode())
    path = Path(state_dir) / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(Fernet.generate_key())
        except FileExistsError:  # another process won the race: use its key
            pass
    return Fernet(path.read_bytes().strip())


def validate(fields: dict[str, Any]) -> Any:
    """The same pydantic model as crmsync.yaml, so http:// and typos fail with the same messages."""
    try:
        return _ADAPTER.validate_python({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in e['loc'][1:] or e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
                 for e in exc.errors()]
        raise AccountError("\n".join(lines)) from None


def save(dsn: str, state_dir: Path, name: str, account: Any) -> None:
    plain = json.loads(account.model_dump_json(exclude=set(secret_fields(account))))
    secrets = {k: getattr(account, k).get_secret_value() for k in secret_fields(account)
               if getattr(account, k) is not None}
    token = fernet(state_dir).encrypt(json.dumps(secrets).encode()).decode()
    with pg.connect(dsn) as conn:
        conn.execute("""INSERT INTO crmsync.external_accounts (name, type, settings, secrets) VALUES (%s, %s, %s, %s)
                        ON CONFLICT (name) DO UPDATE SET type = EXCLUDED.type, settings = EXCLUDED.settings,
                        secrets = EXCLUDED.secrets, updated_at = now()""",
                     (name, account.type, json.dumps(plain), token))


def remove(dsn: str, name: str) -> bool:
    with pg.connect(dsn) as conn:
        return conn.execute("DELETE FROM crmsync.external_accounts WHERE name = %s", (name,)).rowcount > 0


def _configured(dsn: str) -> set[str]:
    with pg.connect(dsn) as conn:
        return {r[0] for r in conn.execute("SELECT account FROM crmsync.crm_schemas")}


def all_accounts(dsn: str, settings: Settings) -> list[StoredAccount]:
    """Database accounts (decrypted) plus crmsync.yaml accounts, with their wizard status."""
    configured = _configured(dsn)
    found = [StoredAccount(n, a, "file", n in configured) for n, a in settings.accounts.items()]
    with pg.connect(dsn) as conn:
        rows = conn.execute("SELECT name, settings, secrets FROM crmsync.external_accounts ORDER BY name").fetchall()
    if rows:
        cipher = fernet(settings.state_dir)
        for name, plain, token in rows:
            try:
                secrets = json.loads(cipher.decrypt(token.encode()))
            except InvalidToken:
                raise AccountError(f"account {name!r}: its secrets cannot be decrypted with this key "
                                   f"(${KEY_ENV} or {Path(settings.state_dir) / KEY_FILE})") from None
            found.append(StoredAccount(name, validate({**plain, **secrets}), "database", name in configured))
    return found


def get(dsn: str, settings: Settings, name: str) -> StoredAccount:
    for stored in all_accounts(dsn, settings):
        if stored.name == name:
            return stored
    raise AccountError(f"no account {name!r} (see `crmsync account list`)")


def masked(account: Any) -> dict[str, Any]:
    """The account as a dict fit for printing: every secret shown as ******** (or unset)."""
    shown = json.loads(account.model_dump_json())
    for key in secret_fields(account):
        value = getattr(account, key)
        shown[key] = "********" if value is not None and value.get_secret_value() else "(not set)"
    return shown


def campaign_dsn(settings: Settings) -> str:
    """The Campaign database (started if embedded) with migrations applied; no broker needed here."""
    if settings.campaign.dsn:
        dsn = settings.campaign.dsn
    else:
        from crmsync import infra

        state_dir = settings.state_dir.resolve()
        with infra._locked(state_dir):
            dsn = infra.EmbeddedPostgres(state_dir).start()["dsn"]
    pg.migrate(dsn)
    return dsn
