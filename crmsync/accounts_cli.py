"""`crmsync account add|list|show|test|remove`: external CRM accounts (see crmsync/accounts.py, docs/wizard.md).

Secrets come from options, the environment (CRMSYNC_ACCOUNT_PASSWORD, CRMSYNC_ACCOUNT_SECURITY_TOKEN,
CRMSYNC_ACCOUNT_CLIENT_SECRET) or a hidden prompt, and are never echoed: `show` masks them and every error
message goes through the account's scrubber.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from crmsync import accounts, config
from crmsync.config import ConfigError, Settings

account_app = typer.Typer(help="External CRM accounts: add, list, show, test, remove.", no_args_is_help=True)


def context(ctx: typer.Context) -> tuple[Settings, str]:
    """Settings (from the main command's --config) and the migrated Campaign database."""
    root = ctx.find_root().obj
    path = root.get("config_file") if isinstance(root, dict) else None
    try:
        settings = config.load(path)
    except ConfigError as exc:
        Console().print(f"[red]configuration error[/red]\n{exc}", highlight=False)
        raise typer.Exit(2)
    return settings, accounts.campaign_dsn(settings)


def fail(message: str, code: int = 1) -> None:
    Console(stderr=True).print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def stored(ctx: typer.Context, name: str) -> tuple[Settings, str, accounts.StoredAccount]:
    settings, dsn = context(ctx)
    try:
        return settings, dsn, accounts.get(dsn, settings, name)
    except accounts.AccountError as exc:
        fail(str(exc), 2)
        raise  # unreachable


@account_app.command("add")
def add(ctx: typer.Context, name: str = typer.Argument(..., help="internal name, e.g. salesforceCRM"),
        type_: str = typer.Option("salesforce", "--type", help="CRM type"),
        login_url: Optional[str] = typer.Option(None, help="https:// login URL (default login.salesforce.com)"),
        username: str = typer.Option(..., help="CRM login"),
        password: str = typer.Option(..., prompt=True, hide_input=True, envvar="CRMSYNC_ACCOUNT_PASSWORD"),
        security_token: str = typer.Option("", envvar="CRMSYNC_ACCOUNT_SECURITY_TOKEN", show_default=False),
        client_id: Optional[str] = typer.Option(None),
        client_secret: Optional[str] = typer.Option(None, envvar="CRMSYNC_ACCOUNT_CLIENT_SECRET", show_default=False),
        sandbox: bool = typer.Option(False, help="a Salesforce sandbox org (test.salesforce.com)"),
        api_version: Optional[str] = typer.Option(None), ca_file: Optional[Path] = typer.Option(None),
        auth: Optional[str] = typer.Option(None, help="oauth | soap")) -> None:
    """Store an account in the Campaign database, its secrets encrypted."""
    settings, dsn = context(ctx)
    if name in settings.accounts:
        fail(f"account {name!r} is already defined in the configuration file", 2)
    try:
        account = accounts.validate(dict(type=type_, login_url=login_url, username=username, password=password,
                                         security_token=security_token, client_id=client_id,
                                         client_secret=client_secret, sandbox=sandbox, api_version=api_version,
                                         ca_file=ca_file, auth=auth))
    except accounts.AccountError as exc:
        fail(f"account {name!r} is not valid:\n{exc}", 2)
    try:
        accounts.save(dsn, settings.state_dir, name, account)
    except accounts.AccountError as exc:
        fail(f"account {name!r} is not valid:\n{exc}", 2)
    Console().print(f"account {name!r} saved (not configured: run `crmsync wizard {name}`)", highlight=False)


@account_app.command("list")
def list_accounts(ctx: typer.Context) -> None:
    """Every account, from the database and from crmsync.yaml, with its status."""
    settings, dsn = context(ctx)
    table = Table(title="external accounts")
    for column in ("name", "type", "source", "username", "login url", "status"):
        table.add_column(column, overflow="fold")
    try:
        found = accounts.all_accounts(dsn, settings)
    except accounts.AccountError as exc:
        fail(str(exc), 2)
    for a in found:
        table.add_row(a.name, a.account.type, a.source, a.account.username, a.account.login_url,
                      "configured" if a.configured else "not configured")
    Console().print(table)


@account_app.command("show")
def show(ctx: typer.Context, name: str) -> None:
    """One account, secrets masked."""
    _, _, found = stored(ctx, name)
    table = Table(title=f"account {name}", show_header=False)
    for key, value in {**accounts.masked(found.account), "source": found.source,
                       "status": "configured" if found.configured else "not configured"}.items():
        table.add_row(key, str(value))
    Console().print(table)


@account_app.command("test")
def test(ctx: typer.Context, name: str) -> None:
    """Log in for real and report the organization, the user and the API version."""
    _, _, found = stored(ctx, name)
    try:
        report = login_report(name, found.account)
    except Exception as exc:  # noqa: BLE001 - any failure is reported, scrubbed of secrets
        from services.salesforce.auth import scrub

        fail(f"login to account {name!r} failed: {scrub(str(exc), found.account)}")
    Console().print(f"account {name!r}: login OK\n  organization: {report['organization']}\n"
                    f"  user: {report['user']}\n  API version: {report['api_version']}", highlight=False)


def login_report(name: str, account: Any) -> dict[str, str]:
    from services.salesforce.client import SalesforceClient

    client = SalesforceClient(name, account)
    org = client.call("query", lambda sf: sf.query("SELECT Name FROM Organization LIMIT 1"))["records"]
    escaped = account.username.replace("\\", "\\\\").replace("'", "\\'")
    user = client.call("query", lambda sf: sf.query(f"SELECT Name FROM User WHERE Username = '{escaped}'"))["records"]
    return {"organization": org[0]["Name"] if org else "?",
            "user": f"{user[0]['Name']} ({account.username})" if user else account.username,
            "api_version": client.session.api_version}


@account_app.command("remove")
def remove(ctx: typer.Context, name: str) -> None:
    """Delete a database account (accounts of crmsync.yaml are removed by editing the file)."""
    settings, dsn = context(ctx)
    if name in settings.accounts:
        fail(f"account {name!r} comes from the configuration file; remove it there", 2)
    if not accounts.remove(dsn, name):
        fail(f"no account {name!r} in the database", 2)
    Console().print(f"account {name!r} removed")
