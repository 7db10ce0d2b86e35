"""`crmsync`: the one command line that fronts everything (infra, Campaign db, services, sandboxes, demo)."""
from __future__ import annotations

import contextlib
import importlib
import json
import logging
import time
from pathlib import Path
from typing import Optional

import typer
import typer.main
from typer import _click as click
from typer.core import TyperGroup
from rich.console import Console
from rich.table import Table

from crmsync import config, infra, kafka, logs, pg, process
from crmsync.config import ConfigError, Settings

# The sub-commands of their own modules are imported when one of them runs (or `--help` lists them): a service
# process (`crmsync service …`, six of them per `crmsync run`) used to import every connector, the sandboxes, the
# wizard and the workflow engine first — half of its start-up CPU.
_SUB_APPS = {  # name -> (module, its Typer app), in the order `--help` lists them
    "sandbox": ("sandboxes.cli", "sandbox_app"),  # (absent from an install without the sandboxes)
    "rejects": ("crmsync.rejects_cli", "rejects_app"),
    "account": ("crmsync.accounts_cli", "account_app"),
    "wizard": ("crmsync.wizard.cli", "wizard_app"),
    "enums": ("crmsync.enums_cli", "enums_app"),
    "workflow": ("crmsync.workflow.cli", "workflow_app"),
}


class _LazyGroup(TyperGroup):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*super().list_commands(ctx), *(n for n in _SUB_APPS if self.get_command(ctx, n) is not None)]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is None and name in _SUB_APPS:
            module, attribute = _SUB_APPS[name]
            try:
                sub_app = getattr(importlib.import_module(module), attribute)
            except ModuleNotFoundError as exc:
                if name == "sandbox" and (exc.name or "").startswith("sandboxes"):
                    return None
                raise
            command = self.commands[name] = typer.main.get_group(sub_app)
            command.name = name
        return command


app = typer.Typer(help="crmsync: two-way CRM ⇄ Campaign sync over Kafka.", no_args_is_help=True, cls=_LazyGroup)
infra_app = typer.Typer(help="Start, stop and inspect the embedded broker and PostgreSQL.", no_args_is_help=True)
campaign_app = typer.Typer(help="The Campaign (marketing) database.", no_args_is_help=True)
capture_app = typer.Typer(help="Change capture of the Campaign database.", no_args_is_help=True)
app.add_typer(infra_app, name="infra")
app.add_typer(campaign_app, name="campaign")
app.add_typer(capture_app, name="capture")
console = Console()
SERVICES = ("capture", "streams", "writer-campaign", "poller", "writer-crm", "mirror")
SERVICE_ALIASES = {"poller-salesforce": "poller", "writer-salesforce": "writer-crm"}  # the names of 0.1, for a release


@app.callback()
def main(ctx: typer.Context,
         config_file: Optional[Path] = typer.Option(None, "--config", "-c", help="crmsync.yaml to use",
                                                    envvar="CRMSYNC_CONFIG")) -> None:
    process.die_with_parent()  # a child of `crmsync run` / the demo ends with it, even when it is killed
    ctx.obj = {"config_file": config_file}


def settings(ctx: typer.Context) -> Settings:
    """Load the configuration once per command; a bad file ends the command with its explanation."""
    if "settings" not in ctx.obj:
        try:
            ctx.obj["settings"] = config.load(ctx.obj["config_file"])
        except ConfigError as exc:
            console.print(f"[red]configuration error[/red]\n{exc}", highlight=False)
            raise typer.Exit(2)
        kafka.use_security(ctx.obj["settings"].kafka)  # every Kafka client of this process: TLS / SASL
        kafka.use_compression(ctx.obj["settings"].kafka)
    return ctx.obj["settings"]


def with_store(ctx: typer.Context, dsn: str, *, quiet: bool = False) -> Settings:
    """The configuration plus the account store's accounts (crmsync.yaml wins a clash, with a warning)."""
    from crmsync import accounts

    warn = logging.getLogger("crmsync.accounts").warning if quiet else \
        (lambda message: Console(stderr=True).print(f"[yellow]warning:[/yellow] {message}", highlight=False))
    try:
        return accounts.with_store(settings(ctx), dsn, warn)
    except (accounts.AccountError, ConfigError) as exc:
        Console(stderr=True).print(f"[red]configuration error[/red]\n{exc}", highlight=False)
        raise typer.Exit(2)


def endpoints(ctx: typer.Context, migrate: bool = True) -> infra.Endpoints:
    found = infra.up(settings(ctx))
    if migrate:
        pg.migrate(found.campaign_dsn)
    return found


@app.command("config")
def show_config(ctx: typer.Context, offline: bool = typer.Option(
        False, help="only crmsync.yaml and the environment: do not read the account store")) -> None:
    """Validate the configuration and print it, with the account store's accounts (secrets masked)."""
    current = settings(ctx)
    if not offline:
        dsn = current.campaign.dsn or (infra.status(current)["postgres"] or {}).get("dsn")
        if dsn:
            current = with_store(ctx, dsn)
        else:
            Console(stderr=True).print("note: the account store was not read: the embedded PostgreSQL is not "
                                       "running (`crmsync infra up`)", highlight=False)
    shown = json.loads(current.model_dump_json())
    if shown["campaign"]["dsn"]:
        shown["campaign"]["dsn"] = pg.masked_dsn(shown["campaign"]["dsn"])
    console.print_json(json.dumps(shown))


@app.command("compose-env")
def compose_env(file: Path = typer.Option(Path(".env"), help="the env file docker compose reads"),
                secure_kafka: bool = typer.Option(False, help="point the services at the SASL_SSL broker of the "
                                                              "secure-kafka profile"),
                force: bool = typer.Option(False, help="replace an existing file (and the secrets in use)")) -> None:
    """Write docker compose's env file: fresh random secrets, mode 0600 (docker-compose.yml needs it)."""
    from crmsync import compose

    try:
        written = compose.write_env_file(file, secure_kafka=secure_kafka, force=force)
    except compose.ComposeError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2)
    console.print(f"{file}: {', '.join(written)} (mode 0600); now `docker compose up --build`", highlight=False)


@app.command("kafka-tls")
def kafka_tls(out_dir: Path = typer.Argument(..., help="where the broker's files go (a volume)"),
              broker: str = typer.Option("kafka-secure", help="the broker's host name (in its certificate)"),
              username: str = typer.Option("crmsync", envvar="KAFKA_SASL_USERNAME"),
              password: str = typer.Option("", envvar="KAFKA_SASL_PASSWORD", show_default=False),
              force: bool = typer.Option(False, help="make new files even when they exist")) -> None:
    """The SASL_SSL broker's keystore, passwords, JAAS users and CA (the secure-kafka compose profile)."""
    from crmsync import compose

    try:
        made = compose.kafka_tls(out_dir, broker, username, password, force=force)
    except compose.ComposeError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2)
    console.print(f"{out_dir}: {', '.join(p.name for p in made)}", highlight=False)


# -- infra --------------------------------------------------------------------------------------------------
@infra_app.command("up")
def infra_up(ctx: typer.Context) -> None:
    """Start the embedded broker and PostgreSQL (unless configured to use external ones) and migrate."""
    found = endpoints(ctx)
    console.print(f"broker     {found.bootstrap_servers}\npostgresql {pg.masked_dsn(found.campaign_dsn)}")


@infra_app.command("down")
def infra_down(ctx: typer.Context) -> None:
    """Stop the embedded services (the broker is memory-only: its topics are gone afterwards)."""
    stopped = infra.down(settings(ctx))
    for name, was_running in stopped.items():
        console.print(f"{name}: {'stopped' if was_running else 'not running'}")


@infra_app.command("status")
def infra_status(ctx: typer.Context) -> None:
    status = infra.status(settings(ctx))
    for name, info in status.items():
        console.print(f"{name}: {json.dumps(info) if info else 'not running'}")
    if not all(status.values()):
        raise typer.Exit(1)


# -- Campaign database ----------------------------------------------------------------------------------------
@campaign_app.command("migrate")
def campaign_migrate(ctx: typer.Context) -> None:
    """Apply pending migrations of the Campaign database (also done by every service on start)."""
    found = endpoints(ctx, migrate=False)
    applied = pg.migrate(found.campaign_dsn)
    console.print("applied: " + (", ".join(applied) if applied else "nothing, schema is current"))


@campaign_app.command("seed")
def campaign_seed(ctx: typer.Context, recipients: int = typer.Option(1000, min=1),
                  seed: int = typer.Option(42, help="same seed, same data"),
                  first_person: int = typer.Option(0, help="index of the first generated person")) -> None:
    """Fill the Campaign database with realistic recipients, organisations and purchases (COPY, fast)."""
    from rich.progress import Progress

    from crmsync.campaign.seed import seed as run_seed

    found = endpoints(ctx)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("seeding recipients", total=recipients)
        counts = run_seed(found.campaign_dsn, recipients, seed=seed, first_person=first_person,
                          progress=lambda n: progress.advance(task, n))
    console.print(", ".join(f"{v} {k}" for k, v in counts.items()))


# -- services -------------------------------------------------------------------------------------------------
@app.command("service")
def service(ctx: typer.Context, name: str = typer.Argument(..., help=f"one of: {', '.join(SERVICES)}"),
            account: Optional[str] = typer.Option(None, help="CRM account (pollers and CRM writers)"),
            interval: float = typer.Option(2.0, help="seconds between CRM polls"),
            metrics_port: int = typer.Option(0, envvar="CRMSYNC_METRICS_PORT",
                                             help="serve Prometheus metrics on this port (0 = off)"),
            metrics_host: str = typer.Option("127.0.0.1", envvar="CRMSYNC_METRICS_HOST"),
            log_level: str = typer.Option("INFO"),
            stop_grace: float = typer.Option(5.0, envvar="CRMSYNC_STOP_GRACE_SECONDS", min=0.5,
                                             help="seconds between SIGTERM and the exit, whatever the service waits for")
            ) -> None:
    """Run one service in the foreground (what a container runs)."""
    if name in SERVICE_ALIASES:
        console.print(f"[yellow]service {name!r} is now {SERVICE_ALIASES[name]!r} (any CRM); the old name goes in "
                      "the next release[/yellow]", highlight=False)
        name = SERVICE_ALIASES[name]
    if name not in SERVICES:
        console.print(f"[red]unknown service {name!r}[/red]; choose one of: {', '.join(SERVICES)}")
        raise typer.Exit(2)
    logs.setup(name, log_level)
    process.exit_within(stop_grace)
    process.steady_heap()
    process.fewer_collections()
    from crmsync import observability

    readiness = observability.Readiness()
    if metrics_port:  # /metrics, /healthz and /readyz (not ready until the checks below pass)
        observability.serve(name, metrics_port, metrics_host, readiness)
    found = endpoints(ctx)
    from crmsync.run import effective_settings

    current = effective_settings(with_store(ctx, found.campaign_dsn, quiet=True), None)
    kafka.tune_groups(current)
    observability.add_service_checks(readiness, name, current, found.bootstrap_servers, found.campaign_dsn, account)
    observability.know_mappings(current)
    if name == "capture":
        from services.capture.service import CaptureConfigError, main as capture_main

        try:
            capture_main(current, found.bootstrap_servers, found.campaign_dsn)
        except CaptureConfigError as exc:
            console.print(f"[red]change capture cannot start:[/red] {exc}", highlight=False)
            raise typer.Exit(2)
    elif name == "streams":
        from streams.app import run as run_streams

        run_streams(current, found, log_level.lower())
    elif name == "writer-campaign":
        from services.campaign_writer.service import run as run_campaign_writer

        run_campaign_writer(current, found, sorted({m.campaign_table for m in current.mappings}))
    else:
        account_name = _account(current, account)
        objects = sorted({m.crm_object for m in current.mappings if m.account == account_name})
        if name == "poller":
            from services.crm_poller.service import run as run_poller

            run_poller(current, found, account_name, objects, interval, stop=process.stop_on_signals())
        elif name == "mirror":
            from services.mirror.service import run as run_mirror

            run_mirror(current, found, account_name, stop=process.stop_on_signals())
        else:
            from services.crm_writer.service import run as run_crm_writer

            run_crm_writer(current, found, account_name, stop=process.stop_on_signals())


def _account(current: Settings, requested: str | None) -> str:
    if requested:
        if requested not in current.accounts:
            console.print(f"[red]no account {requested!r}[/red]; configured: {', '.join(current.accounts) or 'none'}")
            raise typer.Exit(2)
        return requested
    if not current.accounts:
        console.print("[red]no CRM account configured[/red]: add one under accounts: in crmsync.yaml")
        raise typer.Exit(2)
    return next(iter(current.accounts))


@capture_app.command("status")
def capture_status(ctx: typer.Context) -> None:
    """Replication slot position and lag in bytes."""
    from services.capture.service import read_slot_status

    found = endpoints(ctx)
    with pg.connect(found.campaign_dsn, autocommit=True) as conn:
        console.print_json(json.dumps(read_slot_status(conn, settings(ctx).campaign.slot_name)))


@app.command("demo")
def demo(ctx: typer.Context, contacts: int = typer.Option(1000, min=1, help="contacts seeded in the sandbox"),
         recipients: int = typer.Option(1000, min=1, help="recipients seeded in Campaign"),
         shared: int = typer.Option(300, min=0, help="recipients sharing an email with a contact"),
         scenario: Optional[str] = typer.Option(None, help="scripted scenario to play: basic"),
         exit_when_done: bool = typer.Option(False, "--exit", help="exit after the scenario (0 = converged)"),
         seconds: Optional[float] = typer.Option(None, help="stop the live view after this many seconds"),
         dashboard_port: int = typer.Option(8080, help="port of the lag dashboard (0 = any free port)"),
         crm: str = typer.Option("salesforce", help="the CRM whose local sandbox to sync with")) -> None:
    """Two-way sync between a local CRM sandbox (Salesforce by default) and Campaign, live, until Ctrl-C.
    Everything it started is stopped when it ends."""
    from crmsync import connectors
    from crmsync import demo as demo_module

    if crm not in connectors.types():
        console.print(f"[red]unknown CRM {crm!r}[/red]; available: {', '.join(connectors.types())}")
        raise typer.Exit(2)
    if scenario not in (None, "basic"):
        console.print(f"[red]unknown scenario {scenario!r}[/red]; available: basic")
        raise typer.Exit(2)
    process.interrupt_on_stop_signals()
    with contextlib.ExitStack() as running:  # stopped in reverse order, however the demo ends
        try:
            found = endpoints(ctx)
            demo_module.keep_or_stop_infrastructure(settings(ctx), found, running, console)
            run = demo_module.start(settings(ctx), found, running, contacts=contacts, recipients=recipients,
                                    shared=shared, console=console, crm=crm)
            board = _start_dashboard(run.settings, found, run.supervisor.metrics_targets(), "127.0.0.1",
                                     dashboard_port, False)
            if board:
                running.callback(board.stop)
            if scenario:
                from crmsync import scenario as scenarios

                verdict = scenarios.basic(run, console)
                if verdict.ok:
                    console.print("[green]converged[/green]: both sides agree, conflict, delete and duplicate handled")
                else:
                    console.print("[red]not converged[/red]:\n" + "\n".join(f"  - {p}" for p in verdict.problems))
                if exit_when_done:
                    raise typer.Exit(0 if verdict.ok else 1)
            until = time.monotonic() + seconds if seconds else None
            demo_module.watch(run, console, until, board.url if board else None)
        except KeyboardInterrupt:
            console.print("stopping the demo …")


def _repair_drift(current: Settings, found: infra.Endpoints) -> None:
    """The periodic drift-repair pass of `crmsync run` (the same as `crmsync reconcile`)."""
    from crmsync.drift import repair_all

    repair_all(current, found, say=lambda line: console.print(f"[yellow]{line}[/yellow]"))


SHOW_VALUES_HELP = "show record values in the dashboard's reject reasons (personal data; hidden by default)"
ALLOWED_HOSTS_HELP = "host names the dashboard answers to besides loopback and --host, comma-separated"


@app.command("run")
def run_all(ctx: typer.Context, repair_minutes: float = typer.Option(
        15.0, help="minutes between drift-repair passes (0 = never; `crmsync reconcile` runs one now)"),
            dashboard_port: int = typer.Option(8080, help="port of the built-in dashboard (0 = no dashboard)"),
            dashboard_host: str = typer.Option("127.0.0.1", help="address the dashboard listens on"),
            show_values: bool = typer.Option(False, help=SHOW_VALUES_HELP),
            workers: int = typer.Option(1, min=1, max=64, help="processes each for the streams and the writers; "
                                        "they split the topics' partitions (kafka.partitions, at least this many)")
            ) -> None:
    """Start every service for the configured mappings (embedded defaults and the sandbox when nothing is
    configured) and keep them running until Ctrl-C."""
    from crmsync.run import CHECK_SECONDS, Supervisor, effective_settings, plan, start_sandbox, write_effective_config

    process.interrupt_on_stop_signals()  # SIGTERM / SIGHUP stop the services and the sandbox, like Ctrl-C
    with contextlib.ExitStack() as running:  # whatever was started is stopped, in reverse order
        try:
            found = endpoints(ctx)
            current = with_store(ctx, found.campaign_dsn)
            log_dir = current.state_dir / "logs"
            log_dir.mkdir(parents=True, exist_ok=True)
            sandbox = None
            if not current.accounts:
                sandbox = start_sandbox(current.state_dir, log_file=log_dir / "sandbox-salesforce.log")
                running.callback(process.stop, sandbox.process)
            effective = effective_settings(current, sandbox)
            config_file = write_effective_config(effective, found, current.state_dir / "run" / "crmsync.yaml",
                                                 leave_out=set(current.accounts) - set(settings(ctx).accounts))
            if workers > effective.kafka.partitions:
                console.print(f"[yellow]{workers} workers but {effective.kafka.partitions} partitions per topic: "
                              f"{workers - effective.kafka.partitions} of each will idle; raise kafka.partitions[/yellow]")
            supervisor = Supervisor(plan(effective, workers), found, config_file, log_dir, settings=effective,
                                    embedded=current, say=lambda line: console.print(f"[yellow]{line}[/yellow]"))
            running.callback(supervisor.stop)
            supervisor.start()
            if dashboard_port:
                board = _start_dashboard(effective, found, supervisor.metrics_targets(), dashboard_host,
                                         dashboard_port, show_values)
                if board:
                    running.callback(board.stop)
            console.print(f"running: {', '.join(s.label for s in supervisor.specs)} (logs: {log_dir}); Ctrl-C stops")
            next_repair = time.monotonic() + repair_minutes * 60
            while True:
                time.sleep(CHECK_SECONDS)
                for label in supervisor.check():
                    console.print(f"[yellow]restarted {label}[/yellow]")
                if repair_minutes and time.monotonic() >= next_repair:
                    next_repair = time.monotonic() + repair_minutes * 60
                    _repair_drift(effective, found)
        except KeyboardInterrupt:
            console.print("stopping …")


def _start_dashboard(effective: Settings, found: infra.Endpoints, targets: dict[str, str], host: str, port: int,
                     show_values: bool):  # -> dashboard app.Running | None
    """The dashboard next to the services; its link (with the access token) is printed once."""
    from crmsync.dashboard import app as dashboard_app

    try:
        board = dashboard_app.start(dashboard_app.create(effective, found.bootstrap_servers, found.campaign_dsn,
                                                         targets, show_values=show_values), host, port)
    except RuntimeError as exc:  # e.g. the port is taken: the sync runs all the same
        console.print(f"[yellow]{exc}; running without the dashboard[/yellow]")
        return None
    console.print(f"dashboard: {board.login_url}", highlight=False, soft_wrap=True)
    return board


@app.command("dashboard")
def dashboard(ctx: typer.Context, host: str = typer.Option("127.0.0.1", envvar="CRMSYNC_DASHBOARD_HOST"),
              port: int = typer.Option(8080, envvar="CRMSYNC_DASHBOARD_PORT", help="0 = any free port"),
              targets: str = typer.Option("", envvar="CRMSYNC_METRICS_TARGETS",
                                          help="services' metrics to read: name=url,name=url (freshness, API budget)"),
              interval: float = typer.Option(5.0, help="seconds between samples"),
              show_values: bool = typer.Option(False, help=SHOW_VALUES_HELP),
              allowed_hosts: str = typer.Option("", envvar="CRMSYNC_DASHBOARD_ALLOWED_HOSTS",
                                                help=ALLOWED_HOSTS_HELP)) -> None:
    """The dashboard alone (lag, freshness, status per consumer group, rejects, record journeys), until Ctrl-C
    or SIGTERM. Prints its link (with the access token) once."""
    from crmsync.dashboard import app as dashboard_app
    from crmsync.run import effective_settings

    logs.setup("dashboard")
    process.interrupt_on_stop_signals()
    found = endpoints(ctx)
    scraped = dict(item.split("=", 1) for item in targets.split(",") if "=" in item)
    board = dashboard_app.create(effective_settings(with_store(ctx, found.campaign_dsn, quiet=True), None),
                                 found.bootstrap_servers, found.campaign_dsn, scraped, interval,
                                 show_values=show_values, extra_hosts=tuple(allowed_hosts.split(",")))
    try:
        running = dashboard_app.start(board, host, port)
    except RuntimeError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1)
    console.print(f"dashboard: {running.login_url}", highlight=False, soft_wrap=True)
    try:
        while running.thread.is_alive():
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        running.stop()


@app.command("reconcile")
def reconcile(ctx: typer.Context, dry_run: bool = typer.Option(False, help="only report the divergence")) -> None:
    """Drift repair: compare both sides record by record and re-publish what diverged. With no CRM account
    configured, the CRM is the local Salesforce sandbox, as for `crmsync run` (started for the pass if needed)."""
    from crmsync.drift import DriftChecker, open_clients
    from crmsync.run import effective_settings, running_sandbox, start_sandbox

    found = endpoints(ctx)
    current = with_store(ctx, found.campaign_dsn)
    with contextlib.ExitStack() as running:
        sandbox = None
        if not current.accounts:
            sandbox = running_sandbox(current.state_dir)
            if sandbox is None:
                sandbox = start_sandbox(current.state_dir, log_file=current.state_dir / "logs" / "sandbox-salesforce.log")
                running.callback(process.stop, sandbox.process)
                console.print("no CRM account is configured: started the local Salesforce sandbox for this pass")
        current = effective_settings(current, sandbox)
        checker = DriftChecker(current, found, running.enter_context(open_clients(current)))
        table = Table(title="drift" + (" (dry run)" if dry_run else ""))
        for column in ("mapping", "crm", "campaign", "missing in Campaign", "missing in CRM", "differing",
                       "gone from CRM", "gone from Campaign", "duplicates", "re-published"):
            table.add_column(column, justify="right")
        for mapping in current.mappings:
            report = checker.compare(mapping)
            published = 0 if dry_run or report.converged else checker.repair(mapping, report)
            s = report.summary()
            table.add_row(mapping.name, *(str(s[k]) for k in ("crm", "campaign", "missing_in_campaign", "missing_in_crm",
                                                               "differing", "gone_from_crm", "gone_from_campaign",
                                                               "duplicates")), str(published))
        console.print(table)


if __name__ == "__main__":
    app()
