"""Change events over the Streaming API (CometD long polling), read with the unmodified public client
`aiosfstream-ng` 0.7.5 (on aiocometd-ng), plus raw Bayeux checks of the error paths.

aiosfstream-ng's own authenticators post to login.salesforce.com; its documented extension point is an
`AuthenticatorBase` subclass, so the test supplies one that runs the OAuth password flow against the sandbox.
Its CometD transport takes the TLS context from the client's `ssl` attribute (aiocometd's own option).
"""
from __future__ import annotations

import asyncio
import ssl
from typing import Any, Callable

import aiohttp
import pytest
from aiosfstream_ng import Client, ReplayOption
from aiosfstream_ng.auth import AuthenticatorBase

from .conftest import RunningSandbox

API = "/services/data/v59.0"


class SandboxPasswordAuthenticator(AuthenticatorBase):
    """The OAuth 2.0 username-password flow against the sandbox's token endpoint."""

    def __init__(self, sb: RunningSandbox, context: ssl.SSLContext) -> None:
        super().__init__()
        self.sb, self.context = sb, context

    async def _authenticate(self) -> tuple[int, Any]:
        c = self.sb.credentials
        async with aiohttp.ClientSession() as session:
            response = await session.post(f"{self.sb.base_url}/services/oauth2/token", ssl=self.context, data={
                "grant_type": "password", "client_id": c.client_id, "client_secret": c.client_secret,
                "username": c.username, "password": c.password + c.security_token})
            return response.status, await response.json()


@pytest.fixture
def streaming(start_sandbox: Callable[..., RunningSandbox]) -> RunningSandbox:
    return start_sandbox("streaming", extra_args=("--cometd-timeout", "2"))


def test_aiosfstream_receives_change_events_with_replay(streaming: RunningSandbox) -> None:
    http = streaming.session()
    http.headers["Authorization"] = f"Bearer {streaming.access_token()}"
    before = http.post(f"{streaming.base_url}{API}/sobjects/Contact",
                       json={"FirstName": "Grace", "LastName": "Before", "MailingCity": "Oslo"}).json()["id"]

    async def scenario() -> list[dict[str, Any]]:
        context = ssl.create_default_context(cafile=str(streaming.ca_path))
        client = Client(SandboxPasswordAuthenticator(streaming, context), replay=ReplayOption.ALL_EVENTS)
        client.ssl = context
        await client.open()
        try:
            await client.subscribe("/data/ContactChangeEvent")
            first = await asyncio.wait_for(client.receive(), 15)  # replayed from before the subscription
            await asyncio.to_thread(lambda: http.patch(f"{streaming.base_url}{API}/sobjects/Contact/{before}",
                                                       json={"LastName": "After", "Phone": "+47 1"}))
            second = await asyncio.wait_for(client.receive(), 15)  # delivered on a held /meta/connect
            return [first, second]
        finally:
            await client.close()

    created, updated = asyncio.run(scenario())
    assert created["channel"] == "/data/ContactChangeEvent"
    payload = created["data"]["payload"]
    assert payload["ChangeEventHeader"]["changeType"] == "CREATE" and payload["ChangeEventHeader"][
        "recordIds"] == [before]
    assert payload["Name"] == {"FirstName": "Grace", "LastName": "Before"}  # nulls are left out in JSON
    assert payload["MailingAddress"] == {"City": "Oslo"} and payload["CreatedDate"].endswith("Z")
    assert "nulledFields" not in payload["ChangeEventHeader"] and created["data"]["schema"]
    header = updated["data"]["payload"]["ChangeEventHeader"]
    assert header["changeType"] == "UPDATE"
    assert sorted(header["changedFields"]) == ["LastModifiedDate", "Name.LastName", "Phone"]
    assert updated["data"]["event"]["replayId"] > created["data"]["event"]["replayId"]


def test_bayeux_errors(streaming: RunningSandbox) -> None:
    url, http = f"{streaming.base_url}/cometd/59.0", streaming.session()
    denied = http.post(url, json=[{"channel": "/meta/handshake", "version": "1.0",
                                   "supportedConnectionTypes": ["long-polling"]}],
                       headers={"Authorization": "OAuth 00Dwrong!session"})
    assert denied.status_code == 401
    assert denied.json()[0]["error"] == "403::Handshake denied"
    assert denied.json()[0]["ext"]["sfdc"]["failureReason"] == "401::Authentication invalid"
    http.headers["Authorization"] = f"Bearer {streaming.access_token()}"
    handshake = http.post(url, json=[{"channel": "/meta/handshake", "version": "1.0", "id": "1",
                                      "supportedConnectionTypes": ["long-polling"]}]).json()[0]
    assert handshake["successful"] and handshake["supportedConnectionTypes"] == ["long-polling"]
    assert handshake["advice"] == {"interval": 0, "timeout": 2000, "reconnect": "retry"}
    client_id = handshake["clientId"]
    bad_replay = http.post(url, json=[{"channel": "/meta/subscribe", "clientId": client_id,
                                       "subscription": "/data/ContactChangeEvent",
                                       "ext": {"replay": {"/data/ContactChangeEvent": 123456}}}]).json()[0]
    assert not bad_replay["successful"] and bad_replay["error"].startswith("400::The replayId {123456} you "
                                                                           "provided was invalid.")
    unknown_channel = http.post(url, json=[{"channel": "/meta/subscribe", "clientId": client_id,
                                            "subscription": "/data/NopeChangeEvent"}]).json()[0]
    assert unknown_channel["error"].startswith("400::")
    gone = http.post(url, json=[{"channel": "/meta/connect", "clientId": "not-a-client",
                                 "connectionType": "long-polling"}]).json()[0]
    assert gone["error"] == "403::Unknown client" and gone["advice"]["reconnect"] == "handshake"
