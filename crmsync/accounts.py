"""External CRM accounts stored in the Campaign database: every field authenticated, secrets encrypted (Fernet).

Why in the database: like Adobe Campaign's external accounts, every service and operator sees the same
accounts without shipping a YAML file around. Accounts from crmsync.yaml keep working and are listed too
(source "file"); `add` refuses names the file already uses.

What is protected how (docs/security.md):
- The whole record — name, type, every setting and the secrets — is one Fernet token (AES-128-CBC + HMAC) in
  the `secrets` column. The `settings` column repeats the non-secret settings for people reading the table;
  a row whose `name`, `type` or `settings` differ from the authenticated copy was altered outside crmsync and
  is refused (whoever can write the table must not be able to point `login_url` elsewhere and collect the
  password, nor move one account's secrets to another).
- No file path is taken from the database: `--ca-file` is read when the account is added and its PEM stored
  inside the record; it is written back to a private file (`<state>/secrets/ca/`) when the account is used.
- The key is not in the state directory (a copy of the data directory must not hold the key to its own
  secrets): `$CRMSYNC_SECRET_KEY` (the key itself), else `$CRMSYNC_SECRET_KEY_FILE`, else
  `$XDG_CONFIG_HOME/crmsync/secret.key` (`~/.config/…`), created once with mode 0600 in a 0700 directory.
  A key left at `<state>/secret.key` by an older crmsync is moved there on first use.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cryptography import x509
from cryptography.fernet import Fernet, InvalidToken
from pydantic import TypeAdapter, ValidationError

from crmsync import pg, private
from crmsync.config import Account, Settings

log = logging.getLogger("crmsync.accounts")
KEY_ENV = "CRMSYNC_SECRET_KEY"
KEY_FILE_ENV = "CRMSYNC_SECRET_KEY_FILE"
LEGACY_KEY_FILE = "secret.key"  # <state_dir>/secret.key, where crmsync kept the key before
RECORD_VERSION = 2
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


def key_file() -> Path:
    """Where the key is kept when it is not given in the environment."""
    if os.environ.get(KEY_FILE_ENV):
        return Path(os.environ[KEY_FILE_ENV])
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "crmsync" / "secret.key"


def fernet(state_dir: Path) -> Fernet:
    """The cipher: from $CRMSYNC_SECRET_KEY, else the key file, generated once (or moved from the state dir)."""
    if os.environ.get(KEY_ENV):
        return Fernet(os.environ[KEY_ENV].encode())
    path = key_file()
    try:
        if not path.exists():
            legacy = Path(state_dir) / LEGACY_KEY_FILE
            if legacy.exists():
                if private.write_private(path, legacy.read_bytes(), exclusive=True):
                    log.warning("moved the accounts' key from %s to %s (keys stay out of the state directory)",
                                legacy, path)
                legacy.unlink()
            else:
                private.write_private(path, Fernet.generate_key(), exclusive=True)
        return Fernet(private.read_private(path).strip())
    except private.PrivateFileError as exc:
        raise AccountError(f"the accounts' key: {exc}") from None
    except OSError as exc:
        raise AccountError(f"the accounts' key {path} cannot be used ({exc.strerror}); set ${KEY_FILE_ENV} to a "
                           f"file of your own, or ${KEY_ENV}") from None


def validate(fields: dict[str, Any]) -> Any:
    """The same pydantic model as crmsync.yaml, so http:// and typos fail with the same messages."""
    try:
        return _ADAPTER.validate_python({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in e['loc'][1:] or e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
                 for e in exc.errors()]
        raise AccountError("\n".join(lines)) from None


def _ca_pem(account: Any) -> str | None:
    """The PEM text of the account's `ca_file`, checked to hold certificates (stored instead of the path)."""
    if not getattr(account, "ca_file", None):
        return None
    try:
        text = Path(account.ca_file).read_text()
        if not x509.load_pem_x509_certificates(text.encode()):
            raise ValueError
    except OSError as exc:
        raise AccountError(f"ca_file: cannot read {account.ca_file} ({exc.strerror})") from None
    except ValueError:
        raise AccountError(f"ca_file: {account.ca_file} holds no PEM certificate (-----BEGIN CERTIFICATE-----)") from None
    return text


def save(dsn: str, state_dir: Path, name: str, account: Any) -> None:
    """Store `account` under `name`: the whole record authenticated and encrypted, the CA as PEM text."""
    plain = json.loads(account.model_dump_json(exclude={"ca_file", *secret_fields(account)}))
    ca_pem = _ca_pem(account)
    if ca_pem:
        plain["ca_pem"] = ca_pem
    secrets = {k: getattr(account, k).get_secret_value() for k in secret_fields(account)
               if getattr(account, k) is not None}
    record = {"v": RECORD_VERSION, "name": name, "type": account.type, "settings": plain, "secrets": secrets}
    token = fernet(state_dir).encrypt(json.dumps(record).encode()).decode()
    with pg.connect(dsn) as conn:
        conn.execute("""INSERT INTO crmsync.external_accounts (name, type, settings, secrets) VALUES (%s, %s, %s, %s)
                        ON CONFLICT (name) DO UPDATE SET type = EXCLUDED.type, settings = EXCLUDED.settings,
                        secrets = EXCLUDED.secrets, updated_at = now()""",
                     (name, account.type, json.dumps(plain), token))


def _open(name: str, type_: str, settings: dict[str, Any], token: str, cipher: Fernet) -> dict[str, Any]:
    """The authenticated record of one row, or AccountError when the row does not match it."""
    altered = (f"account {name!r} was altered outside crmsync (its stored settings no longer match their "
               f"authenticated copy); it is not used. If the change was yours, store the account again with "
               f"`crmsync account remove {name}` and `crmsync account add {name} …`")
    try:
        record = json.loads(cipher.decrypt(token.encode()))
    except InvalidToken:
        raise AccountError(f"account {name!r}: its record cannot be decrypted with this key (${KEY_ENV}, "
                           f"${KEY_FILE_ENV} or {key_file()}), or was altered; use the key it was stored with, "
                           f"or store it again with `crmsync account add {name} …`") from None
    if not isinstance(record, dict) or record.get("v") != RECORD_VERSION:
        raise AccountError(f"account {name!r} was stored by an older crmsync, without protection of its settings; "
                           f"store it again: `crmsync account remove {name}` and `crmsync account add {name} …`")
    if (record["name"], record["type"], record["settings"]) != (name, type_, settings) or "ca_file" in settings:
        raise AccountError(altered)
    return record


def _ca_file(state_dir: Path, name: str, pem: str) -> Path:
    """The record's CA as a private file (the HTTP client wants a path), named by its content."""
    digest = hashlib.sha256(pem.encode()).hexdigest()[:16]
    path = Path(state_dir) / "secrets" / "ca" / f"{name}-{digest}.pem"
    private.write_private(path, pem.encode())
    return path


def remove(dsn: str, name: str) -> bool:
    with pg.connect(dsn) as conn:
        return conn.execute("DELETE FROM crmsync.external_accounts WHERE name = %s", (name,)).rowcount > 0


def _configured(dsn: str) -> set[str]:
    with pg.connect(dsn) as conn:
        return {r[0] for r in conn.execute("SELECT account FROM crmsync.crm_schemas")}


def stored_accounts(dsn: str, state_dir: Path) -> dict[str, Any]:
    """The database's accounts (authenticated, decrypted, validated), by name."""
    with pg.connect(dsn) as conn:
        rows = conn.execute("SELECT name, type, settings, secrets FROM crmsync.external_accounts ORDER BY name").fetchall()
    if not rows:
        return {}
    cipher = fernet(state_dir)
    found = {}
    for name, type_, settings, token in rows:
        record = _open(name, type_, settings, token, cipher)
        fields = {**record["settings"], **record["secrets"]}
        pem = fields.pop("ca_pem", None)
        if pem:
            fields["ca_file"] = str(_ca_file(state_dir, name, pem))
        found[name] = validate(fields)
    return found


def all_accounts(dsn: str, settings: Settings) -> list[StoredAccount]:
    """Database accounts (decrypted) plus crmsync.yaml accounts, with their wizard status."""
    configured = _configured(dsn)
    found = [StoredAccount(n, a, "file", n in configured) for n, a in settings.accounts.items()]
    found += [StoredAccount(n, a, "database", n in configured)
              for n, a in stored_accounts(dsn, settings.state_dir).items()]
    return found


def with_store(settings: Settings, dsn: str, warn: Callable[[str], None] = log.warning) -> Settings:
    """`settings` with the account store's accounts added (crmsync.yaml's win a name clash, said through `warn`),
    checked: every mapping's account exists. What every service and command that connects to a CRM uses."""
    stored = stored_accounts(dsn, settings.state_dir)
    for name in sorted(stored.keys() & settings.accounts.keys()):
        warn(f"account {name!r} is in crmsync.yaml and in the account store; crmsync.yaml's is used")
    merged = settings.model_copy(update={"accounts": {
        **settings.accounts, **{name: a for name, a in stored.items() if name not in settings.accounts}}})
    merged.check_accounts()
    return merged


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
