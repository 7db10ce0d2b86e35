"""The Dynamics sink against a real sandbox: groups through the *Multiple actions and $batch, idempotent upserts by
the Campaign key, per-record errors, deletes, lookups, value types, rate limits and compare-and-set."""
from __future__ import annotations

import time
import uuid
from decimal import Decimal
from typing import Any, Callable

import httpx

from connectors.dynamics import CONNECTOR
from connectors.dynamics.auth import ServiceProtection
from connectors.dynamics.connector import DynamicsClient
from crmsync.envelope import ApplyCommand
from tests.sandbox_dynamics.conftest import RunningSandbox

from .conftest import ACCOUNT_NAME, account_for


def command(obj: str, values: dict[str, Any], *, key: str | None = None, campaign_key: str | None = None,
            action: str = "upsert", expect: dict[str, Any] | None = None) -> ApplyCommand:
    return ApplyCommand(id=f"cmd-{uuid.uuid4().hex[:8]}", side="crm", target=ACCOUNT_NAME, object=obj,
                        action=action, key={"id": key} if key else None, values=values, cause="test",
                        match={"crmsync_campaignkey": campaign_key} if campaign_key else None, expect=expect)


def requests(sandbox: RunningSandbox) -> dict[str, int]:
    return sandbox.admin("stats")["requests"]


def test_groups_per_record_errors_idempotent_creates_and_deletes(start_sandbox: Callable[..., RunningSandbox],
                                                                 connect: Callable[..., DynamicsClient]) -> None:
    sandbox = start_sandbox()
    client = connect(sandbox)
    sink = CONNECTOR.sink(client, multiple_threshold=50)
    tag = uuid.uuid4().hex[:6]
    creates = [command("contact", {"lastname": f"{tag} {i}", "emailaddress1": f"p{i}@{tag}.example"},
                       campaign_key=f"{tag}-{i}") for i in range(60)]
    creates[10].values["lastname"] = "x" * 51  # longer than the column: Dataverse refuses it
    creates[20].values["gendercode"] = 9  # not an option: refused before sending
    creates[30].values["nosuch"] = "?"
    sandbox.admin("reset-stats", {})
    outcomes = sink.apply(creates)
    assert [o.command.id for o in outcomes] == [c.id for c in creates]
    refused = {i: (o.code, o.message) for i, o in enumerate(outcomes) if not o.ok}
    assert set(refused) == {10}
    assert refused[10][0] == "0x80044331" and "maximum allowed length" in refused[10][1]
    # a value crmsync knows Dataverse cannot take is refused alone: the record is written without it
    assert outcomes[20].ok and set(outcomes[20].refused_fields) == {"gendercode"}
    assert "Female" in outcomes[20].refused_fields["gendercode"]
    assert outcomes[30].ok and set(outcomes[30].refused_fields) == {"nosuch"}
    assert not any(o.refused_fields for i, o in enumerate(outcomes) if i not in (20, 30))
    assert all(o.created and uuid.UUID(str(o.crm_id)) for i, o in enumerate(outcomes) if i not in refused)
    calls = requests(sandbox)
    assert calls["POST contacts/Microsoft.Dynamics.CRM.UpsertMultiple"] == 1  # refused as a whole (atomic)...
    assert calls["POST $batch"] == 1  # ...then one $batch answered record by record
    assert client.query("contacts", filter=f"startswith(lastname,'{tag}')", select=["contactid"]) is not None
    assert len(list(client.query("contacts", filter=f"startswith(lastname,'{tag}')"))) == 59

    again = sink.apply([c for i, c in enumerate(creates) if i not in refused])  # a batch consumed twice
    assert all(o.ok and not o.created for o in again)
    assert [o.crm_id for o in again] == [o.crm_id for i, o in enumerate(outcomes) if i not in refused]
    assert len(list(client.query("contacts", filter=f"startswith(lastname,'{tag}')"))) == 59

    ids = [str(o.crm_id) for o in again]
    updates = [command("contact", {"jobtitle": f"Job {i}"}, key=record) for i, record in enumerate(ids)]
    sandbox.admin("reset-stats", {})
    assert all(o.ok and o.crm_id == c.key["id"] for o, c in zip(sink.apply(updates), updates))
    assert requests(sandbox)["POST contacts/Microsoft.Dynamics.CRM.UpdateMultiple"] == 1
    never = str(uuid.uuid4())
    deletes = [command("contact", {}, key=record, action="delete") for record in ids[:3]]
    deleted = sink.apply(deletes + [command("contact", {}, key=ids[0], action="delete"),  # already gone: done
                                    command("contact", {}, key=never, action="delete")])
    assert all(o.ok for o in deleted)
    assert client.retrieve("contacts", ids[0]) is None and client.retrieve("contacts", ids[3]) is not None
    ghost = sink.apply([command("contact", {"jobtitle": "Ghost"}, key=ids[0])])[0]  # never re-creates a record
    assert not ghost.ok and ghost.code == "0x80040217" and client.retrieve("contacts", ids[0]) is None


def test_mixed_work_goes_in_one_batch_parents_first(start_sandbox: Callable[..., RunningSandbox],
                                                    connect: Callable[..., DynamicsClient]) -> None:
    sandbox = start_sandbox()
    client = connect(sandbox)
    sink = CONNECTOR.sink(client)
    tag = uuid.uuid4().hex[:6]
    existing = client.create("accounts", {"name": f"{tag} existing"})
    person = client.create("contacts", {"lastname": f"{tag} person"})
    work = [
        command("opportunity", {"name": f"{tag} deal", "parentaccountid": {"campaign_key": f"{tag}-acc"},
                                "estimatedvalue": 10}, campaign_key=f"{tag}-opp"),  # its parent comes later
        command("contact", {"lastname": f"{tag} at existing", "parentcustomerid": existing}, campaign_key=f"{tag}-c1"),
        command("contact", {"lastname": f"{tag} at person", "parentcustomerid": person}, campaign_key=f"{tag}-c2"),
        command("account", {"name": f"{tag} new"}, campaign_key=f"{tag}-acc"),
        command("account", {"telephone1": "42"}, key=existing),
        command("contact", {"lastname": "x", "parentcustomerid": str(uuid.uuid4())}, campaign_key=f"{tag}-c3"),
        command("contact", {"lastname": "x"}, key=f"{existing})/../accounts({existing}"),  # not an id
        command("contact", {"lastname": f"{tag} at new", "parentcustomerid": {"$ref": {  # as the streams send it
            "object": "account", "external_id": {"crmsync_campaignkey": f"{tag}-acc"}}}}, campaign_key=f"{tag}-c4"),
    ]
    sandbox.admin("reset-stats", {})
    outcomes = sink.apply(work)
    assert [o.ok for o in outcomes] == [True] * 5 + [False, False, True]
    assert outcomes[5].code == "CRMSYNC_INVALID_VALUE" and "no account or contact record" in outcomes[5].message
    assert outcomes[6].code == "CRMSYNC_NO_KEY" and "not a Dataverse record id" in outcomes[6].message
    calls = requests(sandbox)
    assert calls["POST $batch"] == 1 and not any("Multiple" in k for k in calls)
    deal = client.retrieve("opportunities", str(outcomes[0].crm_id), select=["_parentaccountid_value"])
    assert deal is not None and deal["_parentaccountid_value"] == outcomes[3].crm_id
    linked = {o.crm_id: client.retrieve("contacts", str(o.crm_id), select=["_parentcustomerid_value"])
              for o in outcomes[1:3]}
    assert [row["_parentcustomerid_value"] for row in linked.values()] == [existing, person]  # account, contact
    at_new = client.retrieve("contacts", str(outcomes[7].crm_id), select=["_parentcustomerid_value"])
    assert at_new is not None and at_new["_parentcustomerid_value"] == outcomes[3].crm_id


def test_values_keep_their_types(dynamics: DynamicsClient) -> None:
    sink = CONNECTOR.sink(dynamics)
    tag = uuid.uuid4().hex[:6]
    outcome = sink.apply([command("contact", {
        "lastname": tag, "birthdate": "1990-01-02T23:30:00-05:00",  # a date-time for a date: its UTC day
        "creditlimit": 1234567.895, "crmsync_interests": ["Webinars", "1"], "gendercode": "female",
        "donotemail": "true", "numberofchildren": "3", "lastusedincampaign": "2024-05-01T10:20:30.456+02:00",
        "description": "line one\nline two \u00e9\u4e2d'\""}, campaign_key=f"{tag}-t")])[0]
    assert outcome.ok, outcome.message
    row = dynamics.retrieve("contacts", str(outcome.crm_id))
    assert row is not None
    assert row["birthdate"] == "1990-01-03" and row["creditlimit"] == 1234567.9  # rounded to 2 places: .90
    assert row["crmsync_interests"] == "1,4" and row["gendercode"] == 2 and row["donotemail"] is True
    assert row["numberofchildren"] == 3 and row["lastusedincampaign"] == "2024-05-01T08:20:30Z"
    assert row["description"] == "line one\nline two \u00e9\u4e2d'\""
    sent: list[bytes] = []
    dynamics.http.event_hooks["request"].append(lambda request: sent.append(request.read()))
    try:  # 16 significant digits: more than a float holds, as many as Dataverse's money keeps
        exact = sink.apply([command("opportunity", {"name": tag, "estimatedvalue": Decimal("98765432109876.54")},
                                    campaign_key=f"{tag}-o")])[0]
    finally:
        dynamics.http.event_hooks["request"].clear()
    assert exact.ok and any(b'"estimatedvalue": 98765432109876.54,' in body for body in sent)  # on the wire
    date_only = sink.apply([command("opportunity", {"estimatedclosedate": "2024-02-29"}, key=str(exact.crm_id))])
    assert date_only[0].ok
    assert dynamics.retrieve("opportunities", str(exact.crm_id))["estimatedclosedate"] == "2024-02-29"


def test_compare_and_set_leaves_a_field_a_user_changed(sandbox: RunningSandbox,
                                                       dynamics: DynamicsClient) -> None:
    sink = CONNECTOR.sink(dynamics)
    record = dynamics.create("contacts", {"lastname": "Before", "jobtitle": "Before", "telephone1": "1"})
    dynamics.update("contacts", record, {"jobtitle": "Edited by a user"})
    outcome = sink.apply([command("contact", {"jobtitle": "From Campaign", "lastname": "From Campaign"},
                                  key=record, expect={"jobtitle": "Before", "lastname": "Before"})])[0]
    assert outcome.ok and outcome.superseded == ["jobtitle"]
    row = dynamics.retrieve("contacts", record, select=["jobtitle", "lastname"])
    assert row is not None and (row["jobtitle"], row["lastname"]) == ("Edited by a user", "From Campaign")
    nothing = sink.apply([command("contact", {"jobtitle": "Again"}, key=record, expect={"jobtitle": "Before"})])[0]
    assert nothing.ok and nothing.superseded == ["jobtitle"]
    dynamics.update("contacts", record, {"telephone1": "2"})
    same = sink.apply([command("contact", {"telephone1": "2"}, key=record, expect={"telephone1": "1"})])[0]
    assert same.ok and same.superseded == []  # the CRM already holds the new value: nothing is superseded

    # a user edit landing between the sink's read and its write: the write's If-Match fails (412), the sink reads
    # again and leaves that field alone
    user = httpx.Client(verify=account_for(sandbox).verify())
    token = dynamics.tokens.token()

    def edit_before_the_write(request: httpx.Request) -> None:
        if request.method == "POST" and request.url.path.endswith("$batch") and not edited:
            edited.append(True)
            user.patch(f"{dynamics.service_root}/contacts({record})", json={"telephone1": "user"},
                       headers={"Authorization": f"Bearer {token}", "If-Match": "*"}).raise_for_status()

    edited: list[bool] = []
    dynamics.http.event_hooks["request"].append(edit_before_the_write)
    try:
        raced = sink.apply([command("contact", {"telephone1": "campaign", "lastname": "Raced"}, key=record,
                                    expect={"telephone1": "2", "lastname": "From Campaign"})])[0]
    finally:
        dynamics.http.event_hooks["request"].remove(edit_before_the_write)
        user.close()
    assert edited and raced.ok and raced.superseded == ["telephone1"]
    row = dynamics.retrieve("contacts", record, select=["telephone1", "lastname"])
    assert row is not None and (row["telephone1"], row["lastname"]) == ("user", "Raced")


def test_rate_limits_are_honoured(start_sandbox: Callable[..., RunningSandbox],
                                  connect: Callable[..., DynamicsClient]) -> None:
    sandbox = start_sandbox()
    sandbox.admin("limits", {"requests_per_window": 6, "window_seconds": 2, "reset": True})
    client = connect(sandbox, service_protection=ServiceProtection(requests_per_window=6, window_seconds=2))
    sink = CONNECTOR.sink(client)
    record = client.create("contacts", {"lastname": "Paced"})
    started = time.monotonic()
    for i in range(8):  # one request each (and the metadata reads): more than one window allows
        assert sink.apply([command("contact", {"jobtitle": f"#{i}"}, key=record)])[0].ok
    assert time.monotonic() - started >= 2 and client.pacer.waited > 0
    assert sandbox.admin("stats")["service_protection"]["throttled"] == 0  # steady state: never refused

    unaware = connect(sandbox, service_protection=ServiceProtection(headroom=1.0))  # 6,000 and no reserve: the
    sink = CONNECTOR.sink(unaware)  # sandbox's 429s with Retry-After are what paces it
    for i in range(8):
        assert sink.apply([command("contact", {"jobtitle": f"unaware #{i}"}, key=record)])[0].ok
    assert sandbox.admin("stats")["service_protection"]["throttled"] > 0 and unaware.retries > 0
    usage = unaware.usage()
    assert usage.calls >= 8 + unaware.retries - 1 and usage.remaining is not None and usage.limit == 6000
    assert usage.window == "5 minutes"
