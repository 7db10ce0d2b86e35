"""crmsync configuration: one YAML file (`crmsync.yaml`), validated by pydantic, with environment overrides.

Precedence, highest first: environment (`KAFKA_BOOTSTRAP_SERVERS` and the other `KAFKA_*` of KAFKA_ENVIRONMENT,
`CAMPAIGN_DSN`, `CRMSYNC_STATE_DIR`),
then the file, then the embedded defaults (a broker and a PostgreSQL that crmsync starts itself).
A bad file is reported as ``<file>: <key.path>: <what is expected>`` so the user knows what to fix.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from urllib.parse import urlsplit

import psycopg
import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, SecretStr, SerializeAsAny, TypeAdapter,
                      ValidationError, ValidationInfo, field_validator, model_validator)

from crmsync.connectors import API_NAME, AccountBase
from crmsync.values import shown as _shown

DEFAULT_CONFIG_FILE = "crmsync.yaml"
DEFAULT_CAPTURE_TABLES = ["recipients", "organisations", "purchases", "enumerations", "enumeration_values"]
# Validation context of a file read before the account store was: a mapping may name an account that is not in
# the file (`crmsync account add`); Settings.check_accounts() is the check once the store's accounts are in.
ACCOUNTS_FROM_STORE = "accounts_from_store"


# -- names ------------------------------------------------------------------------------------------------------
# A name in crmsync.yaml ends up as a PostgreSQL identifier, in a CRM query, or in topic and group names: checked
# here, so a bad one is refused with its key when the file is read, not by a service that crashes on it later.
SLOT_NAME = re.compile(r"[a-z0-9_]{1,63}")
HOST_PORT = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)(?::(?P<port>\d{1,5}))?")  # PostgreSQL's rule for replication slot names
LABEL_MAX = 100  # characters of a name that is only a label (it still becomes part of topic and group names)


def _sql_name(value: str) -> str:
    """Any PostgreSQL identifier (crmsync quotes every one it uses): not empty, no NUL, at most 63 bytes (longer
    ones are cut short by PostgreSQL, and two names could become one)."""
    if not value or "\x00" in value or len(value.encode()) > 63:
        raise ValueError(f"{_shown(value)} is not a PostgreSQL name (1 to 63 bytes, no NUL)")
    return value


def _table_name(value: str) -> str:
    """`table` or `schema.table`."""
    schema, _, table = value.rpartition(".")
    for part in ([schema] if schema else []) + [table]:
        _sql_name(part)
    return value


def _crm_name(value: str) -> str:
    if not API_NAME.fullmatch(value):
        raise ValueError(f"{_shown(value)} is not a CRM API name (letters, digits and underscores, starting with a "
                         "letter, at most 255 characters)")
    return value


def _slot_name(value: str) -> str:
    if not SLOT_NAME.fullmatch(value):
        raise ValueError(f"{_shown(value)} is not a replication slot name (lower-case letters, digits and "
                         "underscores, at most 63)")
    return value


def _label(value: str) -> str:
    if not value.strip() or len(value) > LABEL_MAX or not value.isprintable():
        raise ValueError(f"{_shown(value)} is not a usable name (1 to {LABEL_MAX} printable characters)")
    return value


SqlName = Annotated[str, AfterValidator(_sql_name)]
TableName = Annotated[str, AfterValidator(_table_name)]
CrmName = Annotated[str, AfterValidator(_crm_name)]
Label = Annotated[str, AfterValidator(_label)]


class ConfigError(Exception):
    """A configuration problem, phrased for the user: file, key, expectation."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KafkaSettings(_Strict):
    """The broker and how to talk to it. A real Kafka should not be PLAINTEXT: `security_protocol: SASL_SSL`
    with a SASL mechanism and credentials, the broker's certificate checked against `ssl_ca_location` (or the
    system's CAs) — verification cannot be turned off. Every client crmsync makes gets these (crmsync/kafka.py)."""

    bootstrap_servers: str | None = Field(None, description="host:port[,host:port]; empty = embedded broker")
    partitions: int = Field(4, ge=1, le=1024)
    compression: Literal["lz4", "zstd", "snappy", "gzip", "none"] = Field(
        "lz4", description="how producers compress their batches: lz4 costs the least CPU (what a small machine runs "
        "out of); zstd makes ~20 % smaller batches for ~40 % more client CPU (docs/benchmarks.md)")
    replication_factor: int = Field(1, ge=1)
    session_timeout_ms: int | None = Field(None, ge=100, description="consumer group session timeout; empty = "
                                           "1 s on the embedded broker, 10 s (with static membership) otherwise")
    static_membership: bool | None = Field(None, description="group.instance.id per replica (restarts keep their "
                                           "partitions); empty = on for a configured broker, off for the embedded one")
    fetch_wait_ms: int | None = Field(None, ge=1, le=10000, description="how long a consumer's fetch waits at the "
                                      "broker when nothing is new; empty = 100 ms on the embedded broker, 500 ms "
                                      "otherwise (crmsync/kafka.py GroupTuning says why)")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: Path | None = Field(None, description="CA certificates (PEM) the broker's certificate must chain to")
    ssl_certificate_location: Path | None = Field(None, description="client certificate (PEM), for brokers that want one")
    ssl_key_location: Path | None = Field(None, description="its private key (PEM)")
    ssl_key_password: SecretStr | None = None

    @field_validator("bootstrap_servers")
    @classmethod
    def _host_ports(cls, value: str | None) -> str | None:
        for item in (value.split(",") if value else []):
            found = HOST_PORT.fullmatch(item.strip())
            if not found or (found.group("port") and not 1 <= int(found.group("port")) <= 65535):
                raise ValueError(f"{_shown(item)} is not host:port (a host name or [IPv6 address], then a port from "
                                 "1 to 65535); separate several with commas")
        return value

    @model_validator(mode="after")
    def _security_is_complete(self) -> "KafkaSettings":
        sasl = self.security_protocol.startswith("SASL_")
        tls = self.security_protocol.endswith("SSL")
        if sasl and not (self.sasl_mechanism and self.sasl_username and self.sasl_password):
            raise ValueError(f"security_protocol {self.security_protocol} needs sasl_mechanism, sasl_username and "
                             "sasl_password")
        if not sasl and (self.sasl_mechanism or self.sasl_username or self.sasl_password):
            raise ValueError("sasl_* settings need security_protocol SASL_SSL (or SASL_PLAINTEXT)")
        if self.security_protocol == "SASL_PLAINTEXT" and self.sasl_mechanism == "PLAIN":
            raise ValueError("SASL PLAIN without TLS sends the password in clear text: use security_protocol SASL_SSL")
        ssl_files = (self.ssl_ca_location, self.ssl_certificate_location, self.ssl_key_location, self.ssl_key_password)
        if not tls and any(ssl_files):
            raise ValueError("ssl_* settings need security_protocol SSL or SASL_SSL")
        if (self.ssl_certificate_location is None) != (self.ssl_key_location is None):
            raise ValueError("ssl_certificate_location and ssl_key_location go together")
        return self


class CampaignSettings(_Strict):
    dsn: str | None = Field(None, description="PostgreSQL DSN; empty = embedded PostgreSQL")
    name: Label = Field("campaign", description="logical name of the Campaign database, used in topic names")
    capture_tables: list[TableName] = Field(default_factory=lambda: list(DEFAULT_CAPTURE_TABLES))
    slot_name: Annotated[str, AfterValidator(_slot_name)] = "crmsync"
    publication: SqlName = "crmsync"
    heartbeat_seconds: float = Field(10.0, gt=0)
    snapshot: Literal["initial", "never"] = Field("initial", description="publish existing rows once, first")
    poll_interval_seconds: float = Field(0.05, gt=0)
    batch_changes: int = Field(5000, ge=1)
    mirror_tables: bool = Field(True, description="also capture the wizard's mirror tables (SQL edits reach the CRM)")
    formula_refresh_seconds: float = Field(300.0, ge=0, description="re-read mirrored formula fields this often; 0 = off")
    capture_replicated: bool = Field(False, description="also capture rows that reach Campaign through PostgreSQL "
                                     "logical replication (they carry a replication origin); crmsync's own writes "
                                     "are then recognised by their tag instead of never being decoded")

    @field_validator("dsn")
    @classmethod
    def _dsn_is_postgres(cls, value: str | None) -> str | None:
        """A DSN libpq will take (never repeated in the error: it may hold a password)."""
        if not value:
            return value
        expected = "expected a PostgreSQL DSN such as postgresql://user@host:5432/campaign"
        url = value.startswith(("postgresql://", "postgres://"))
        if "\x00" in value or len(value) > 4096 or not (url or "=" in value):
            raise ValueError(f"{expected} (at most 4,096 characters, no NUL)")
        try:
            if url:
                urlsplit(value).port  # ValueError when not a number from 0 to 65535
            psycopg.conninfo.conninfo_to_dict(value)
        except (ValueError, psycopg.ProgrammingError):
            raise ValueError(f"{expected}; this one does not parse (check the port, the quoting and the "
                             "percent-encoding)") from None
        return value


def account_types() -> tuple[str, ...]:
    """The CRM types accounts can have: one per registered connector (crmsync/connectors.py)."""
    from crmsync import connectors

    return tuple(connectors.types())


def validate_account(data: Any) -> AccountBase:
    """One account (a mapping with `type:`) as its connector's model; ValidationError says what to fix."""
    return _validated_accounts({"account": data})["account"]


def _validated_accounts(value: Any) -> Any:
    """Each account by its connector's model, chosen by `type:` (errors keep their place: accounts.<name>.<key>)."""
    from crmsync import connectors

    if not isinstance(value, dict):
        return value
    known = connectors.types()
    for name, data in value.items():
        kind = data.get("type") if isinstance(data, dict) else getattr(data, "type", None)
        if kind not in known:
            where, what = ((f"accounts.{name}", "missing 'type:'") if kind is None
                           else (f"accounts.{name}.type", f"unknown account type {kind!r}"))
            raise ValueError(f"{where}: {what} (one of: {', '.join(known)})")
    models = [connectors.connector(t).account_model for t in known]
    account = models[0] if len(models) == 1 else Annotated[Union[tuple(models)], Field(discriminator="type")]
    return TypeAdapter(dict[str, account]).validate_python(value)


Conversion = Literal["default", "date_only", "without_time_offset", "copy"]
Direction = Literal["both", "import", "export"]  # import = CRM → Campaign, export = Campaign → CRM
Side = Literal["crm", "campaign"]


class FieldMap(_Strict):
    """One CRM field ⇄ one Campaign column."""

    crm: CrmName
    campaign: SqlName
    conversion: Conversion = "default"
    direction: Direction | None = Field(None, description="defaults to the mapping's direction")
    owner: Side | None = Field(None, description="this side always wins conflicts on the field")
    reference: str | None = Field(None, description="mapping name of the parent this field points to")
    enumeration: str | None = Field(None, description="Campaign enumeration translating picklist values")


class MatchKey(_Strict):
    """Fields compared (case- and space-insensitively) to link records that have no link yet."""

    crm: CrmName
    campaign: SqlName


class Filter(_Strict):
    """Only records whose fields equal one of the listed values take part (per side, optional)."""

    crm: dict[CrmName, list[Any]] = Field(default_factory=dict)
    campaign: dict[SqlName, list[Any]] = Field(default_factory=dict)


class Mapping(_Strict):
    """A CRM account + object ⇄ a Campaign table, kept in sync by the stream processors."""

    name: Label
    account: str
    crm_object: CrmName
    campaign_table: TableName
    direction: Direction = "both"
    fields: list[FieldMap]
    match: list[MatchKey] = Field(default_factory=list)
    conflict: Literal["last_modified_wins", "crm_wins", "campaign_wins"] = "last_modified_wins"
    delete: Literal["propagate", "mark", "ignore"] = "propagate"
    crm_external_id: str | None = Field(None, description="CRM field holding the Campaign key; empty = the "
                                        "connector's (Salesforce Campaign_Key__c); '' = none")
    filter: Filter = Field(default_factory=Filter)

    def allows(self, field: FieldMap, from_side: Side) -> bool:
        direction = field.direction or self.direction
        return direction == "both" or direction == ("import" if from_side == "crm" else "export")


class Settings(_Strict):
    state_dir: Path = Path(".crmsync")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    campaign: CampaignSettings = Field(default_factory=CampaignSettings)
    accounts: dict[str, SerializeAsAny[AccountBase]] = Field(default_factory=dict)  # its connector's model (`type:`)
    mappings: list[Mapping] = Field(default_factory=list)
    workflows: list[Path] = Field(default_factory=list, description="workflow files `crmsync run` schedules")

    _accounts_by_type = field_validator("accounts", mode="before")(classmethod(lambda cls, v: _validated_accounts(v)))

    @model_validator(mode="after")
    def _mappings_are_consistent(self, info: ValidationInfo) -> "Settings":
        names = [m.name for m in self.mappings]
        store_comes_later = bool((info.context or {}).get(ACCOUNTS_FROM_STORE))
        for mapping in self.mappings:
            if names.count(mapping.name) > 1:
                raise ValueError(f"mapping name {mapping.name!r} is used twice")
            if mapping.account not in self.accounts and not store_comes_later:
                raise ValueError(f"mapping {mapping.name!r} uses account {mapping.account!r}, which is not under accounts:")
            for field in mapping.fields:
                if field.reference and field.reference not in names:
                    raise ValueError(f"mapping {mapping.name!r} field {field.crm!r} references unknown mapping {field.reference!r}")
        self._resolve_external_ids()
        return self

    def check_accounts(self) -> None:
        """Every mapping's account exists (in crmsync.yaml or, once merged in, the account store)."""
        for mapping in self.mappings:
            if mapping.account not in self.accounts:
                raise ConfigError(f"mapping {mapping.name!r} uses account {mapping.account!r}, which is neither under "
                                  "accounts: in crmsync.yaml nor in the account store (see `crmsync account list`)")
        self._resolve_external_ids()

    def _resolve_external_ids(self) -> None:
        """A mapping without `crm_external_id` uses its connector's field ('' = none)."""
        from crmsync import connectors

        for mapping in self.mappings:
            account = self.accounts.get(mapping.account)
            if mapping.crm_external_id is None and account is not None:
                mapping.crm_external_id = connectors.for_account(account).default_external_id
            elif mapping.crm_external_id == "":
                mapping.crm_external_id = None

    def mapping(self, name: str) -> Mapping:
        for mapping in self.mappings:
            if mapping.name == name:
                return mapping
        raise KeyError(name)

    def parents_first(self, tables: list[str]) -> list[str]:
        """Campaign `tables`, each after the tables its mappings reference (organisations before recipients
        before purchases), otherwise in the given order: a snapshot published so is decided parents first, and
        a child finds its parent on its way to the CRM instead of waiting for it."""
        parents: dict[str, set[str]] = {}
        for mapping, parent in self._references():
            if parent.campaign_table != mapping.campaign_table:
                parents.setdefault(mapping.campaign_table, set()).add(parent.campaign_table)
        ordered: list[str] = []

        def place(table: str, seen: frozenset[str]) -> None:
            if table in ordered or table in seen:
                return  # (placed, or a cycle: left where it comes)
            for parent in sorted(parents.get(table, ())):
                if parent in tables:
                    place(parent, seen | {table})
            ordered.append(table)

        for table in tables:
            place(table, frozenset())
        return ordered

    def parents(self, side: str, account: str | None = None) -> dict[str, set[str]]:
        """What each Campaign table (side 'campaign'), or each CRM object of `account` (side 'crm'), references
        through its mappings' reference fields, itself left out; in a cycle of references only the table that
        comes later in `parents_first` names the other."""
        tables = list(dict.fromkeys(m.campaign_table for m in self.mappings))
        order = {table: i for i, table in enumerate(self.parents_first(tables))}
        found: dict[str, set[str]] = {}
        for mapping, parent in self._references():
            if order[parent.campaign_table] >= order[mapping.campaign_table]:
                continue
            if side == "campaign":
                found.setdefault(mapping.campaign_table, set()).add(parent.campaign_table)
            elif mapping.account == account == parent.account:
                found.setdefault(mapping.crm_object, set()).add(parent.crm_object)
        return found

    def _references(self) -> list[tuple[Mapping, Mapping]]:
        """(mapping, the mapping it references) for every reference field of every mapping."""
        return [(mapping, self.mapping(field.reference)) for mapping in self.mappings for field in mapping.fields
                if field.reference]

    @property
    def uses_embedded_broker(self) -> bool:
        return not self.kafka.bootstrap_servers

    @property
    def uses_embedded_postgres(self) -> bool:
        return not self.campaign.dsn


_SECRET_NAME = re.compile(r"(?i)password|secret|token|credential|dsn|key$")  # never echo what such a key holds


def explain_validation_error(source: str, error: ValidationError, *, union: str, tags: tuple[str, ...],
                             kind: str, docs: str, show_input: bool = True) -> str:
    """One line per problem: `<file>: <key.path>: <what to fix>`. Used for crmsync.yaml and workflow files.

    `union` is the list/dict whose items are a tagged union (accounts by `type:`, activities by `type:`); the
    tag pydantic adds to their paths is noise for the user and is left out. A validator's message that names
    its inner place ("filter.and[1]: …") extends the path."""
    lines = []
    for item in error.errors():
        loc = [str(p) for p in item["loc"]]
        if len(loc) > 2 and loc[0] == union and loc[2] in tags:
            del loc[2]
        path = ".".join(loc) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if loc and message.startswith(loc[-1]) and ": " in message:
            inner, message = message.split(": ", 1)
            path = ".".join(loc[:-1] + [inner])
        if item["type"] == "extra_forbidden":
            message = f"unknown key (check the spelling; see {docs})"
        elif item["type"] == "union_tag_not_found":
            message = f"missing 'type:' (one of: {', '.join(tags)})"
        elif item["type"] == "union_tag_invalid":
            message = f"unknown {kind} type {item['ctx']['tag']!r} (one of: {', '.join(tags)})"
        got = item.get("input")
        secret = any(_SECRET_NAME.search(part) for part in loc)
        quiet = (not show_input or secret or isinstance(got, dict)
                 or item["type"] in ("missing", "extra_forbidden", "value_error", "union_tag_invalid"))
        lines.append(f"{source}: {path}: {message}" + ("" if quiet else f" (got {got!r})"))
    return "\n".join(lines)


def _format_validation_error(source: str, error: ValidationError) -> str:
    return explain_validation_error(source, error, union="accounts", tags=account_types(), kind="account",
                                    docs="docs/configuration.md")


# libyaml's safe loader when PyYAML was built with it (the wheels are): the same documents and errors as the
# pure-Python one, ~50x faster (a 2 MB value took 2.7 s to read)
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_yaml_mapping(path: Path, expected: str, error: type[Exception] | None = None) -> dict[str, Any]:
    """A YAML file whose top level is a mapping; any other content raises `error` naming the file, the line and
    column of a syntax error, or what the top level should have been (`expected`)."""
    error = error or ConfigError
    try:
        data = yaml.load(path.read_text(), Loader=_SAFE_LOADER) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise error(f"{path}:{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected {expected} at the top level, got {type(data).__name__}")
    return data


def _read_yaml(path: Path) -> dict[str, Any]:
    return read_yaml_mapping(path, "a mapping of settings")


# Kafka settings a container takes from its environment (KAFKA_<NAME>), e.g. from docker compose's env file
KAFKA_ENVIRONMENT = ("bootstrap_servers", "security_protocol", "sasl_mechanism", "sasl_username", "sasl_password",
                     "ssl_ca_location")


def _apply_environment(data: dict[str, Any], environ: dict[str, str]) -> dict[str, Any]:
    for name in KAFKA_ENVIRONMENT:
        if environ.get(f"KAFKA_{name.upper()}"):
            data.setdefault("kafka", {})[name] = environ[f"KAFKA_{name.upper()}"]
    if environ.get("CAMPAIGN_DSN"):
        data.setdefault("campaign", {})["dsn"] = environ["CAMPAIGN_DSN"]
    if environ.get("CRMSYNC_STATE_DIR"):
        data["state_dir"] = environ["CRMSYNC_STATE_DIR"]
    return data


def load(path: str | Path | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Load settings from `path` (default: $CRMSYNC_CONFIG or ./crmsync.yaml if present) plus the environment.
    Mappings may name accounts of the account store: `crmsync.accounts.with_store` adds them and checks."""
    environ = dict(os.environ if environ is None else environ)
    explicit = path is not None or bool(environ.get("CRMSYNC_CONFIG"))
    file = Path(path or environ.get("CRMSYNC_CONFIG") or DEFAULT_CONFIG_FILE)
    if file.exists():
        data = _read_yaml(file)
    elif explicit:
        raise ConfigError(f"{file}: no such configuration file")
    else:
        data = {}
    data = _apply_environment(data, environ)
    try:
        return Settings.model_validate(data, context={ACCOUNTS_FROM_STORE: True})
    except ValidationError as exc:
        source = str(file) if file.exists() else "environment"
        raise ConfigError(_format_validation_error(source, exc)) from None
