"""`crmsync sandbox ...`: run local CRM sandboxes, HTTPS servers that speak the real CRM APIs.

    crmsync sandbox salesforce [--port 8443] [--state .crmsync/sandboxes/salesforce] [--seed-contacts N]
                               [--tls-name NAME ...] [--username U --password P --security-token T
                               --client-id C --client-secret S] [--admin-token A]
                               [--pubsub-port 7443] [--pubsub-keepalive 270] [--cdc-objects Contact,Lead]
                               [--cdc-retention SECONDS] [--cometd-timeout 110]
    crmsync sandbox dynamics [--port 9443] [--state .crmsync/sandboxes/dynamics] [--seed-contacts N]
                             [--tls-name NAME ...] [--tenant-id T --client-id C --client-secret S
                             --certificate PEM --username U --password P] [--admin-token A]
    crmsync sandbox oracle [--port 8445] [--state .crmsync/sandboxes/oracle] [--seed-contacts N] [--tls-name NAME ...]
                           [--username U --password P] [--user-timezone America/Los_Angeles] [--admin-token A]
    crmsync sandbox ca [--state .crmsync/sandboxes]

Default credentials are `settings.DEFAULT_CREDENTIALS`; secrets can also come from environment variables
(CRMSYNC_SF_PASSWORD, CRMSYNC_SF_SECURITY_TOKEN, CRMSYNC_SF_CLIENT_SECRET, CRMSYNC_OOD_PASSWORD,
CRMSYNC_SANDBOX_ADMIN_TOKEN) to keep them out of the process list. The Dynamics sandbox reads
CRMSYNC_DYN_TENANT_ID, CRMSYNC_DYN_CLIENT_ID, CRMSYNC_DYN_CLIENT_SECRET, CRMSYNC_DYN_CERTIFICATE,
CRMSYNC_DYN_USERNAME and CRMSYNC_DYN_PASSWORD.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer

from crmsync.tls import ensure_ca

from sandboxes.control import DEFAULT_ADMIN_TOKEN

from .dynamics.settings import DEFAULT_CREDENTIALS as _DYN
from .oracle.settings import DEFAULT_CREDENTIALS as ORACLE_CREDENTIALS, DEFAULT_TIMEZONE as ORACLE_TIMEZONE
from .oracle.settings import Credentials as OracleCredentials
from .salesforce.settings import DEFAULT_CREDENTIALS, DEFAULT_RETENTION_SECONDS, DEFAULT_STATE_DIR, Credentials

SANDBOXES_DIR = DEFAULT_STATE_DIR.parent
_D = DEFAULT_CREDENTIALS


def _host() -> Any:
    return typer.Option("127.0.0.1", help="Interface to listen on.")


def _port(default: int) -> Any:
    return typer.Option(default, help="HTTPS port (0 picks a free one; the banner shows it).")


def _state(default: Path) -> Any:
    return typer.Option(default, help="State directory; the CA lives in its parent.")


def _seed_contacts() -> Any:
    return typer.Option(0, help="Seed N demo contacts (and N/5 accounts) into an empty store.")


def _tls_names(example: str) -> Any:
    return typer.Option(None, help=f"Extra DNS name or IP for the certificate (repeatable), e.g. {example}.")


def _admin_token() -> Any:
    return typer.Option(DEFAULT_ADMIN_TOKEN, envvar="CRMSYNC_SANDBOX_ADMIN_TOKEN", show_default=False,
                        help=f"X-Sandbox-Admin header value (default: {DEFAULT_ADMIN_TOKEN}).")


def _log_level() -> Any:
    return typer.Option("info", help="Logging level (requests are logged without query strings).")


sandbox_app = typer.Typer(help="Run local CRM sandboxes: HTTPS servers implementing the real CRM APIs, for demos, "
                               "offline development and tests.", no_args_is_help=True)


@sandbox_app.command("salesforce")
def salesforce(
    host: str = _host(),
    port: int = _port(8443),
    state: Path = _state(DEFAULT_STATE_DIR),
    seed_contacts: int = _seed_contacts(),
    tls_name: Optional[List[str]] = _tls_names("login.salesforce.com"),
    username: str = typer.Option(_D.username, help="API user's username."),
    password: str = typer.Option(_D.password, envvar="CRMSYNC_SF_PASSWORD", show_default=False,
                                 help=f"API user's password (default: {_D.password})."),
    security_token: str = typer.Option(_D.security_token, envvar="CRMSYNC_SF_SECURITY_TOKEN", show_default=False,
                                       help=f"Security token appended to the password (default: "
                                            f"{_D.security_token})."),
    client_id: str = typer.Option(_D.client_id, help="Connected app consumer key."),
    client_secret: str = typer.Option(_D.client_secret, envvar="CRMSYNC_SF_CLIENT_SECRET", show_default=False,
                                      help=f"Connected app consumer secret (default: {_D.client_secret})."),
    admin_token: str = _admin_token(),
    log_level: str = _log_level(),
    pubsub_port: int = typer.Option(7443, help="Pub/Sub API (gRPC over TLS) port; 0 picks a free one (the second "
                                               "banner line shows it)."),
    pubsub_keepalive: float = typer.Option(270.0, help="Seconds of silence before a Subscribe stream gets an empty "
                                                       "keepalive FetchResponse (Salesforce: within 270)."),
    cdc_objects: Optional[str] = typer.Option(None, help="Comma-separated objects selected for Change Data Capture "
                                                         "(default: the stored selection, first Contact,Account,"
                                                         "Opportunity,Lead)."),
    cdc_retention: int = typer.Option(DEFAULT_RETENTION_SECONDS, help="Seconds change events are kept (72 hours "
                                                                      "like Salesforce)."),
    cometd_timeout: float = typer.Option(110.0, help="Seconds a Streaming API /meta/connect long poll is held."),
) -> None:
    """Run the Salesforce sandbox (REST, SOQL, composite, Bulk API 1.0 and 2.0, OAuth and SOAP login, Change Data
    Capture over the Pub/Sub API and the Streaming API)."""
    from .salesforce.server import StreamingOptions, serve  # here: every crmsync command would load the server

    objects = [o.strip() for o in cdc_objects.split(",") if o.strip()] if cdc_objects is not None else None
    streaming = StreamingOptions(pubsub_port=pubsub_port, pubsub_keepalive_seconds=pubsub_keepalive,
                                 cdc_objects=objects, cdc_retention_seconds=cdc_retention,
                                 cometd_timeout_seconds=cometd_timeout)
    serve(host=host, port=port, state_dir=state, seed_contacts=seed_contacts, tls_names=tuple(tls_name or ()),
          credentials=Credentials(username, password, security_token, client_id, client_secret),
          admin_token=admin_token, log_level=log_level, streaming=streaming)


@sandbox_app.command("dynamics")
def dynamics(
    host: str = _host(),
    port: int = _port(9443),
    state: Path = _state(SANDBOXES_DIR / "dynamics"),
    seed_contacts: int = _seed_contacts(),
    tls_name: Optional[List[str]] = _tls_names("login.microsoftonline.com"),
    tenant_id: str = typer.Option(_DYN.tenant_id, envvar="CRMSYNC_DYN_TENANT_ID", help="Entra tenant id."),
    client_id: str = typer.Option(_DYN.client_id, envvar="CRMSYNC_DYN_CLIENT_ID",
                                  help="App registration (client) id."),
    client_secret: str = typer.Option(_DYN.client_secret, envvar="CRMSYNC_DYN_CLIENT_SECRET", show_default=False,
                                      help=f"App client secret (default: {_DYN.client_secret})."),
    certificate: Optional[Path] = typer.Option(None, envvar="CRMSYNC_DYN_CERTIFICATE",
                                               help="PEM certificate registered on the app (enables certificate "
                                                    "client assertions)."),
    username: str = typer.Option(_DYN.username, envvar="CRMSYNC_DYN_USERNAME", help="The user's sign-in name."),
    password: str = typer.Option(_DYN.password, envvar="CRMSYNC_DYN_PASSWORD", show_default=False,
                                 help=f"The user's password (default: {_DYN.password})."),
    admin_token: str = _admin_token(),
    log_level: str = _log_level(),
) -> None:
    """Run the Dynamics 365 sandbox (Entra ID token endpoint, Dataverse Web API v9.x)."""
    from .dynamics.server import serve as serve_dynamics
    from .dynamics.settings import Credentials as DynamicsCredentials

    if certificate is not None and not certificate.is_file():
        raise typer.BadParameter(f"{certificate} is not a file; give the PEM certificate registered on the app.",
                                 param_hint="--certificate")
    serve_dynamics(host=host, port=port, state_dir=state, seed=seed_contacts, tls_names=tuple(tls_name or ()),
                   credentials=DynamicsCredentials(tenant_id, client_id, client_secret, username, password,
                                                   certificate),
                   admin_token=admin_token, log_level=log_level)


@sandbox_app.command("oracle")
def oracle(
    host: str = _host(),
    port: int = _port(8445),
    state: Path = _state(SANDBOXES_DIR / "oracle"),
    seed_contacts: int = _seed_contacts(),
    tls_name: Optional[List[str]] = _tls_names("secure-ausomxabc.crmondemand.com"),
    username: str = typer.Option(ORACLE_CREDENTIALS.username, help="API user's sign-in id (COMPANY/USER)."),
    password: str = typer.Option(ORACLE_CREDENTIALS.password, envvar="CRMSYNC_OOD_PASSWORD", show_default=False,
                                 help=f"API user's password (default: {ORACLE_CREDENTIALS.password})."),
    user_timezone: str = typer.Option(ORACLE_TIMEZONE, help="The API user's time zone (IANA name): REST datetimes "
                                                            "are written and read in it."),
    admin_token: str = _admin_token(),
    log_level: str = _log_level(),
) -> None:
    """Run the Oracle CRM On Demand sandbox (REST API, Web Services v2.0, DeletedItemQueryPage)."""
    from .oracle.server import serve as serve_oracle  # here: every crmsync command would load the server

    try:
        ZoneInfo(user_timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise typer.BadParameter(f"{user_timezone!r} is not an IANA time zone name such as America/Los_Angeles",
                                 param_hint="--user-timezone") from None
    serve_oracle(host=host, port=port, state_dir=state, seed=seed_contacts, tls_names=tuple(tls_name or ()),
                 credentials=OracleCredentials(username, password), user_timezone=user_timezone,
                 admin_token=admin_token, log_level=log_level)


@sandbox_app.command("ca")
def ca(state: Path = typer.Option(SANDBOXES_DIR, help="Directory holding all sandboxes (the CA is DIR/ca.pem).")) \
        -> None:
    """Print the sandbox CA certificate's path, creating the CA if needed (trust it with REQUESTS_CA_BUNDLE)."""
    typer.echo(str(ensure_ca(state).resolve()))


if __name__ == "__main__":
    sandbox_app()
