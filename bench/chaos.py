"""Benchmark: the chaos run, long (issue 11). The tests/chaos.py harness — concurrent edits on both sides,
same-field pairs, hostile values, kill -9 of every service in turn — run longer and on more records than
tests/sync/test_chaos.py, once per seed, each in a world of its own (its own broker, PostgreSQL and sandbox).

Defaults: 3,000 contacts and 3,000 recipients (1,000 shared by email), 90 s of edits at 20 per second on each
side, a same-field pair every ~3 s, a SIGKILL every 8.5 s cycling through the services, seeds 1 and 2. Drift
repair is off: every difference at the end is the pipeline's own.

Printed per seed: edits, creates, deletes, pairs, kills, the time from a kill to the service answering
/readyz again (min/p50/max per service), the time for every consumer group's lag to return to 0 once the edits
stop, divergent records (differ or miss their other side with no open reject saying why; goal 0), emails held
twice (goal 0), CRM writes once quiet (goal 0: no ping-pong), and whatever else tests/chaos.py found wrong.

`--disasters` adds what tests/faults/test_faults_salesforce.py injects (~10 % CRM faults: rate limits, 503s,
expired sessions, answers lost to a client timeout) and two disasters: the broker killed and back empty (its
memory lost) a third of the way in, PostgreSQL crashed two thirds in: the suite's fault run
(tests/faults/test_faults_salesforce.py), seed after seed (docs/faults.md has the runs).

Run: .venv/bin/python bench/chaos.py [--seconds 90] [--rate 20] [--records 3000] [--kill-every 8.5]
                                     [--seeds 1 2] [--disasters] [--keep DIR]   (prints a table; exits 1 if a run found a problem)
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crmsync import process  # noqa: E402
from tests.chaos import Chaos, Report  # noqa: E402
from tests.faults.test_faults_salesforce import CRM_FAULTS, REQUEST_TIMEOUT  # noqa: E402
from tests.pipeline import contacts_pipeline  # noqa: E402
from tests.waiting import wait_for  # noqa: E402


def run_seed(seed: int, args: argparse.Namespace, base: Path) -> tuple[Report, float]:
    """One world, one chaos run; returns the report and the initial sync's seconds."""
    extra = {"account": {"request_timeout": REQUEST_TIMEOUT}} if args.disasters else {}
    with contacts_pipeline(base / f"seed-{seed}", contacts=args.records, recipients=args.records,
                           shared=args.records // 3, **extra) as world:
        started = time.monotonic()
        world.supervisor.start()
        wait_for(world.converged, 600, "the initial sync to converge", world.supervisor, every=2)
        initial = time.monotonic() - started
        faults = dict(crm_faults=CRM_FAULTS, disasters=[(0.3, "broker"), (0.65, "postgres")]) if args.disasters else {}
        report = Chaos(world, seconds=args.seconds, rate=args.rate, pairs=int(args.seconds / 3),
                       kill_every=args.kill_every, seed=seed, **faults).run()
    return report, initial


def restart_figures(report: Report) -> dict[str, str]:
    """Service label → 'min / p50 / max' seconds from SIGKILL to ready."""
    by_label: dict[str, list[float]] = {}
    for kill in report.kills:
        if kill.ready_at is not None:
            by_label.setdefault(kill.label, []).append(kill.ready_at - kill.at)
    return {label: f"{min(s):.1f} / {statistics.median(s):.1f} / {max(s):.1f}  (n={len(s)})"
            for label, s in sorted(by_label.items())}


def table(results: dict[int, tuple[Report, float]], args: argparse.Namespace) -> Table:
    out = Table(title=f"Chaos, {args.seconds:.0f} s of edits at {args.rate:g}/s per side, {args.records:,} records "
                      f"per side, kill -9 every {args.kill_every:g} s")
    out.add_column("")
    for seed in results:
        out.add_column(f"seed {seed}", justify="right")
    rows: list[tuple[str, list[str]]] = [
        ("initial sync (s)", [f"{initial:.0f}" for _, initial in results.values()]),
        ("field edits", [f"{r.edits:,}" for r, _ in results.values()]),
        ("creates / deletes", [f"{r.creates} / {r.deletes}" for r, _ in results.values()]),
        ("same-field pairs", [str(r.pairs) for r, _ in results.values()]),
        ("conflicts recorded", [str(r.conflicts) for r, _ in results.values()]),
        ("kills", [str(len(r.kills)) for r, _ in results.values()]),
    ]
    labels = sorted({k.label for r, _ in results.values() for k in r.kills})
    figures = [restart_figures(r) for r, _ in results.values()]
    rows += [(f"kill → ready, {label} (s: min / p50 / max)", [f.get(label, "-") for f in figures])
             for label in labels]
    rows += [
        ("lag back to 0 after the edits (s)", [f"{r.catch_up_seconds:.1f}" + ("" if r.caught_up else " (not 0 yet)")
                                               for r, _ in results.values()]),
        ("linked pairs at the end", [f"{r.linked_pairs:,}" for r, _ in results.values()]),
        ("differences explained by a reject", [str(r.explained) for r, _ in results.values()]),
        ("divergent records (goal 0)", [str(r.divergent) for r, _ in results.values()]),
        ("emails twice (goal 0)", [str(r.duplicates) for r, _ in results.values()]),
        ("CRM writes once quiet (goal 0)", [str(r.quiet_writes) for r, _ in results.values()]),
        ("problems (goal 0)", [str(len(r.problems)) for r, _ in results.values()]),
    ]
    for name, cells in rows:
        out.add_row(name, *cells)
    return out


def main() -> int:
    process.interrupt_on_stop_signals()  # a SIGTERM (timeout, CI) unwinds: the servers started are stopped
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=90)
    parser.add_argument("--rate", type=float, default=20, help="edits per second on each side")
    parser.add_argument("--records", type=int, default=3000, help="contacts and recipients each")
    parser.add_argument("--kill-every", type=float, default=8.5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--disasters", action="store_true", help="CRM faults, a broker that loses its memory and a "
                                                                 "PostgreSQL crash on top of the kills")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="run the worlds in DIR and keep them (logs, "
                                                                 "data) for an investigation")
    args = parser.parse_args()
    console = Console(width=150)
    results: dict[int, tuple[Report, float]] = {}
    with (nullcontext(str(args.keep)) if args.keep else tempfile.TemporaryDirectory(prefix="crmsync-bench-chaos-")) as base:
        for seed in args.seeds:
            console.print(f"seed {seed}: seeding {args.records:,} records per side and running the chaos …")
            results[seed] = run_seed(seed, args, Path(base))
            for problem in results[seed][0].problems:
                console.print(f"  seed {seed}: {problem}", markup=False)
    console.print(table(results, args))
    return 1 if any(r.problems for r, _ in results.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
