"""The sink against a sandbox of its own: batches with per-record outcomes and OOD's reject fields, idempotent
upserts by the Campaign key, deletes (already gone = done), values without shifts, pacing under the documented
Web Services rate (no refusal in steady state; injected refusals waited out, counted, nothing lost),
compare-and-set, and the parents-first order."""
from __future__ import annotations

import itertools
from typing import Any, Callable

import pytest
from prometheus_client import REGISTRY

from connectors.oracle import CONNECTOR
from connectors.oracle.connection import OracleConnection
from connectors.oracle.sink import OracleSink, OracleSinkOutcome, Planned, _rounds
from crmsync.envelope import ApplyCommand
from tests.sandbox_oracle.conftest import RunningOracle

_ids = itertools.count()


def command(obj: str = "Contact", *, values: dict[str, Any] | None = None, key: str | None = None,
            external: str | None = None, action: str = "upsert", expect: dict[str, Any] | None = None) -> ApplyCommand:
    return ApplyCommand(id=f"cmd-{next(_ids)}", side="crm", target="ood", object=obj, action=action,
                        key={"id": key} if key else None, values=values or {}, cause="test",
                        match={"ExternalSystemId": external} if external else None, expect=expect)


def contact(external: str, **values: Any) -> ApplyCommand:
    return command(values={"ContactFirstName": "Sink", "ContactLastName": external, **values}, external=external)


def current(connection: OracleConnection, record_id: str, *fields: str) -> dict[str, Any]:
    return connection.api.get("Contacts", record_id, fields=list(fields))


def test_a_batch_with_refused_records(own_oracle: RunningOracle, connect: Callable[..., OracleConnection]) -> None:
    connection = connect(own_oracle)
    sink = CONNECTOR.sink(connection)
    commands = [contact(f"SK-A{n:02d}", JobTitle=f"Job {n}") for n in range(25)]
    commands[3] = contact("SK-A03", ContactType="No such type")  # refused: not a value of the picklist
    commands[17] = contact("SK-A17", ContactLastName="x" * 51)  # refused: longer than 50 characters
    outcomes = sink.apply(commands)
    assert [o.command.id for o in outcomes] == [c.id for c in commands], "one outcome per command, in order"
    assert [n for n, o in enumerate(outcomes) if not o.ok] == [3, 17]
    refused = outcomes[3]
    assert isinstance(refused, OracleSinkOutcome) and refused.code == "SBL-DAT-00225"
    assert "ContactType" in refused.message and refused.symbol and refused.log_file.endswith(".log")
    assert refused.reject_fields() == {"errorLogFilename": refused.log_file, "errorCode": "SBL-DAT-00225",
                                       "errorSymbol": "IDS_ERR_FS_BOUNDED_PICKLIST", "errorMessage": refused.message}
    assert outcomes[17].code and "50" in outcomes[17].message
    assert all(o.created and o.crm_id for n, o in enumerate(outcomes) if n not in (3, 17))
    assert current(connection, outcomes[0].crm_id, "JobTitle") == {"JobTitle": "Job 0"}

    again = sink.apply([contact("SK-A00", JobTitle="Job 0, again"), contact("SK-A01")])
    assert [(o.ok, o.created, o.crm_id) for o in again] == [(True, False, outcomes[0].crm_id),
                                                              (True, False, outcomes[1].crm_id)], \
        "a create replayed is an update of the record it made (upsert by the Campaign key)"
    found = list(CONNECTOR.query(connection).records("Contact", ["ExternalSystemId"], ids=[outcomes[0].crm_id]))
    assert [r["ExternalSystemId"] for page in found for r in page] == ["SK-A00"]


def test_updates_and_deletes_by_id(own_oracle: RunningOracle, connect: Callable[..., OracleConnection]) -> None:
    connection = connect(own_oracle)
    sink = CONNECTOR.sink(connection)
    made = sink.apply([contact("SK-B1"), contact("SK-B2"), contact("SK-B3")])
    b1, b2, b3 = (o.crm_id for o in made)
    connection.api.delete("Contacts", b3)
    outcomes = sink.apply([
        command(key=b1, values={"JobTitle": "Updated"}),
        command(key="1SBX-ZZZZZZ", values={"JobTitle": "Nobody"}),
        command(key=b2, action="delete"),
        command(key=b3, action="delete"),  # already deleted: done
        command(key=b1, values={"JobTitle": "Updated twice"}),  # the same record again: after the first
    ])
    assert [o.ok for o in outcomes] == [True, False, True, True, True]
    assert outcomes[1].code == "SBL-EAI-04378"
    assert current(connection, b1, "JobTitle") == {"JobTitle": "Updated twice"}
    assert [r for page in CONNECTOR.query(connection).records("Contact", ["Id"], ids=[b2, b3]) for r in page] == []


def test_values_keep_their_type_and_instant(own_oracle: RunningOracle,
                                            connect: Callable[..., OracleConnection]) -> None:
    """Canonical values in, the same canonical values out: a datetime in the repeated hour of the user's zone, a
    leap day, exact decimals, a boolean, a picklist code."""
    connection = connect(own_oracle)
    values = {"CustomDateTime0": "2024-11-03T09:30:00.000Z", "DateofBirth": "1980-02-29",
              "CustomCurrency0": 1234567.89, "CustomNumber0": 0.1, "NeverEmail": True, "LeadSource": "EVENT"}
    outcome, = CONNECTOR.sink(connection).apply([contact("SK-V1", **values)])
    read, = next(CONNECTOR.query(connection).records("Contact", list(values), ids=[outcome.crm_id]))
    assert {k: read[k] for k in values} == values
    assert current(connection, outcome.crm_id, "CustomDateTime0") == {"CustomDateTime0": "2024-11-03T01:30:00Z"}, \
        "REST shows the user's wall clock: 01:30 PST"


def test_compare_and_set_leaves_what_a_user_changed(own_oracle: RunningOracle,
                                                    connect: Callable[..., OracleConnection]) -> None:
    connection = connect(own_oracle)
    sink = CONNECTOR.sink(connection)
    record_id = sink.apply([contact("SK-C1", JobTitle="Analyst", CustomText0="segment A")])[0].crm_id
    connection.api.update("Contacts", record_id, {"JobTitle": "Edited in OOD"})  # after the decision was made
    writes = own_oracle.admin("stats")["writes"].get("Contact", {}).get("update", 0)
    outcome, = sink.apply([command(key=record_id, values={"JobTitle": "Manager", "CustomText0": "segment B"},
                                   expect={"JobTitle": "Analyst", "CustomText0": "segment A"})])
    assert outcome.ok and outcome.superseded == ["JobTitle"]
    assert current(connection, record_id, "JobTitle", "CustomText0") == {"JobTitle": "Edited in OOD",
                                                                         "CustomText0": "segment B"}
    only_superseded, = sink.apply([command(key=record_id, values={"JobTitle": "Director"},
                                           expect={"JobTitle": "Analyst"})])
    assert only_superseded.ok and only_superseded.superseded == ["JobTitle"]
    assert own_oracle.admin("stats")["writes"]["Contact"]["update"] == writes + 1, "nothing left to write: no call"

    replayed_create = command(values={"JobTitle": "Replayed", "CustomText0": "segment C"}, external="SK-C1",
                              expect={"JobTitle": None, "CustomText0": "segment B"})
    replayed, = sink.apply([replayed_create])
    assert replayed.ok and replayed.superseded == ["JobTitle"], "an upsert expecting an empty field a user filled"
    assert current(connection, record_id, "JobTitle", "CustomText0") == {"JobTitle": "Edited in OOD",
                                                                         "CustomText0": "segment C"}


def test_pacing_under_the_rate_limit_and_refusals_waited_out(own_oracle: RunningOracle,
                                                              connect: Callable[..., OracleConnection]) -> None:
    own_oracle.admin("settings", {"ws_min_interval_ms": 50})  # Oracle's documented spacing
    try:
        connection = connect(own_oracle, ws_min_interval_ms=50)
        sink = CONNECTOR.sink(connection)
        own_oracle.admin("reset-stats", {})
        outcomes = sink.apply([contact(f"SK-R{n:03d}") for n in range(100)])
        assert all(o.ok for o in outcomes)
        stats = own_oracle.admin("stats")
        assert stats["rate_limited"] == 0 and "SBL-ODU-01007" not in stats["errors"], "paced: never refused"

        counted = _rate_limited_metric()
        own_oracle.admin("faults", {"rate_limited": 0.4, "seed": 7})
        outcomes = sink.apply([contact(f"SK-R{n:03d}", JobTitle="second pass") for n in range(100)])
        refused = own_oracle.admin("stats")["errors"].get("SBL-ODU-01007", 0)
        own_oracle.admin("faults", {})
        assert refused > 0 and all(o.ok for o in outcomes), "every refused request waited and went again"
        assert _rate_limited_metric() - counted == refused
        titles = [r["JobTitle"] for page in CONNECTOR.query(connection).records(
            "Contact", ["JobTitle"], ids=[o.crm_id for o in outcomes]) for r in page]
        assert titles == ["second pass"] * 100, "nothing lost"
    finally:
        own_oracle.admin("faults", {})
        own_oracle.admin("settings", {"ws_min_interval_ms": 0})


def _rate_limited_metric() -> float:
    return REGISTRY.get_sample_value("crmsync_oracle_rate_limited_total", {"account": "ood", "api": "webservices"}) or 0.0


def test_parents_first_deletes_children_first_one_record_in_order() -> None:
    plans = [Planned(0, command("Contact", external="c1"), "upsert", {"ExternalSystemId": "c1"}, "ExternalSystemId"),
             Planned(1, command("Account", external="a1"), "upsert", {"ExternalSystemId": "a1"}, "ExternalSystemId"),
             Planned(2, command("Account", key="A", action="delete"), "delete", {"Id": "A"}),
             Planned(3, command("Contact", key="C", action="delete"), "delete", {"Id": "C"}),
             Planned(4, command("Opportunity", key="O"), "update", {"Id": "O"}),
             Planned(5, command("Contact", key="C"), "update", {"Id": "C"})]  # C written again after its delete
    assert [[p.index for p in group] for group in _rounds(plans)] == [[1], [0], [4], [3], [2], [5]]


def test_a_command_for_another_account_is_refused(own_oracle: RunningOracle,
                                                  connect: Callable[..., OracleConnection]) -> None:
    stray = ApplyCommand(id="stray", side="crm", target="other", object="Contact", action="upsert", key=None,
                         values={}, cause="test")
    outcome, = OracleSink(connect(own_oracle)).apply([stray])
    assert not outcome.ok and outcome.code == "CRMSYNC_WRONG_TARGET"


@pytest.fixture(autouse=True)
def _real_clock(own_oracle: RunningOracle) -> None:
    own_oracle.admin("clock", {"offset_seconds": 0})
