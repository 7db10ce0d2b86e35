"""`crmsync account add|list|show|test|remove`: external CRM accounts (see crmsync/accounts.py, docs/wizard.md).

Secrets come from options, the environment (CRMSYNC_ACCOUNT_PASSWORD, CRMSYNC_ACCOUNT_SECURITY_TOKEN,
CRMSYNC_ACCOUNT_CLIENT_SECRET) or a hidden prompt, and are never echoed: `show` masks them and every error
message goes through the account's scrubber.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from crmsync import accounts, config, connectors
from crmsync.config import ConfigError, Settings, account_types

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
        type_: str = typer.Option("salesforce", "--type", help=f"CRM type ({', '.join(account_types())})"),
        login_url: Optional[str] = typer.Option(None, help="https:// login URL (Salesforce; default "
                                                          "login.salesforce.com)"),
        url: Optional[str] = typer.Option(None, help="https:// URL of the CRM (Dynamics, Oracle)"),
        username: Optional[str] = typer.Option(None, help="CRM login"),
        client_id: Optional[str] = typer.Option(None),
        sandbox: bool = typer.Option(False, help="a Salesforce sandbox org (test.salesforce.com)"),
        ca_file: Optional[Path] = typer.Option(None),
        setting: Optional[List[str]] = typer.Option(None, "--set", help="any other account setting, KEY=VALUE "
                                                                       "(repeatable; see docs/configuration.md)")) -> None:
    """Store an account in the Campaign database, its secrets encrypted. Secrets come from the environment
    (CRMSYNC_ACCOUNT_<SETTING>, e.g. CRMSYNC_ACCOUNT_PASSWORD) or are asked for, never from the command line."""
    settings, dsn = context(ctx)
    if name in settings.accounts:
        fail(f"account {name!r} is already defined in the configuration file", 2)
    fields: dict[str, Any] = dict(type=type_, login_url=login_url, url=url, username=username, client_id=client_id,
                                  sandbox=sandbox or None, ca_file=ca_file)
    for item in setting or []:
        key, _, value = item.partition("=")
        if not value:
            fail(f"--set {item!r}: expected KEY=VALUE", 2)
        fields[key.strip()] = value
    try:
        model = connectors.connector(type_).account_model
    except KeyError as exc:
        fail(str(exc).strip('"'), 2)
    fields = {k: v for k, v in fields.items() if k in model.model_fields}
    given = {key: os.environ.get(f"CRMSYNC_ACCOUNT_{key.upper()}") or fields.get(key) for key in secret_names(model)}
    for key, value in given.items():  # asked for: required secrets, and a password when no secret was given
        fields[key] = value or (
            typer.prompt(key.replace("_", " "), hide_input=True, default="", show_default=False)
            if model.model_fields[key].is_required() or (key == "password" and not any(given.values())) else None)
    try:
        account = accounts.validate(fields)
        accounts.save(dsn, settings.state_dir, name, account)
    except accounts.AccountError as exc:
        fail(f"account {name!r} is not valid:\n{exc}", 2)
    Console().print(f"account {name!r} saved (not configured: run `crmsync wizard {name}`)", highlight=False)


def secret_names(model: type) -> list[str]:
    """The model's SecretStr settings, in declaration order."""
    return [n for n, f in model.model_fields.items() if "SecretStr" in str(f.annotation)]


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
        where = getattr(a.account, "login_url", None) or getattr(a.account, "url", None) or ""
        table.add_row(a.name, a.account.type, a.source, str(getattr(a.account, "username", "") or ""), where,
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
        fail(f"login to account {name!r} failed: {found.account.scrub(str(exc))}")
    Console().print(f"account {name!r}: login OK\n  organization: {report['organization']}\n"
                    f"  user: {report['user']}\n  API version: {report['api_version']}", highlight=False)


def login_report(name: str, account: Any) -> dict[str, str]:
    """Log in through the account's connector and ask who we are."""
    connector = connectors.for_account(account)
    client = connector.client(name, account)
    try:
        return {"organization": "?", "user": "?", "api_version": "?", **client.whoami()}
    finally:
        client.close()


@account_app.command("remove")
def remove(ctx: typer.Context, name: str) -> None:
    """Delete a database account (accounts of crmsync.yaml are removed by editing the file)."""
    settings, dsn = context(ctx)
    if name in settings.accounts:
        fail(f"account {name!r} comes from the configuration file; remove it there", 2)
    if not accounts.remove(dsn, name):
        fail(f"no account {name!r} in the database", 2)
    Console().print(f"account {name!r} removed")
