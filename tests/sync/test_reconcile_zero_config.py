"""`crmsync reconcile` on the zero-configuration setup (embedded servers, the local sandbox as the CRM, no
crmsync.yaml): it compares and repairs the shipped mappings against the sandbox the way `crmsync run` syncs them,
using the running sandbox, or starting it for the pass when none runs."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from crmsync import pg, process
from tests.pipeline import contacts_pipeline
from tests.waiting import wait_for


def _reconcile(state: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRMSYNC_", "KAFKA_", "CAMPAIGN_"))}
    env.update(CRMSYNC_STATE_DIR=str(state), COLUMNS="250")
    workdir = state / "workdir"  # not the state dir itself: its sandboxes/ would shadow the package of that name
    workdir.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "crmsync", "reconcile", *args], env=env, cwd=workdir,
                          capture_output=True, text=True, timeout=300)


def _row(output: str, mapping: str) -> list[str]:
    """The cells of the drift table's row for `mapping`."""
    rows = [line.replace("│", " ").split() for line in output.splitlines()]
    return next(cells for cells in rows if cells[:1] == [mapping])


def test_reconcile_repairs_against_the_running_sandbox_without_configuration(own_state_dir: Path) -> None:
    state = own_state_dir
    with contacts_pipeline(state, contacts=40, recipients=40, shared=12) as world:
        world.supervisor.start()
        checker, mapping = world.checker(), world.settings.mappings[0]
        wait_for(lambda: checker.compare(mapping).converged, 300, "the initial sync", every=1,
                 supervisor=world.supervisor)
        with pg.connect(world.found.campaign_dsn) as conn:  # an edit the streams never see (tagged as our own)
            unseen, crm_id = conn.execute("SELECT id, crm_id FROM recipients WHERE crm_id IS NOT NULL ORDER BY id "
                                          "LIMIT 1").fetchone()
            pg.tag_origin(conn, "writer-campaign")
            conn.execute("UPDATE recipients SET job_title = 'seen by reconcile only' WHERE id = %s", (unseen,))
        wait_for(lambda: len(checker.compare(mapping).differing) == 1, 60, "the divergence", every=1)

        result = _reconcile(state)
        assert result.returncode == 0, result.stdout + result.stderr
        contacts = _row(result.stdout, "contacts")
        assert int(contacts[1]) >= 40 and int(contacts[5]) >= 1  # CRM records counted, one differing
        assert "started the local Salesforce sandbox" not in result.stdout  # the running one was used
        wait_for(lambda: world.client.call("get", lambda sf: sf.Contact.get(crm_id))["Title"] == "seen by reconcile only",
                 120, "the repair to reach the CRM", every=1, supervisor=world.supervisor)


def test_reconcile_starts_the_sandbox_for_the_pass_when_none_runs(own_state_dir: Path) -> None:
    state = own_state_dir
    with contacts_pipeline(state, contacts=20, recipients=20, shared=5) as world:
        process.stop(world.sandbox.process)  # nothing runs: no sandbox, no services
        result = _reconcile(state, "--dry-run")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "started the local Salesforce sandbox for this pass" in result.stdout
        assert int(_row(result.stdout, "contacts")[1]) == 20  # the sandbox's contacts were read
        leftovers = subprocess.run(["pgrep", "-f", f"{state}/sandboxes"], capture_output=True, text=True).stdout.split()
        assert leftovers == []  # and it was stopped again
