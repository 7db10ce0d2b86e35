"""The sandbox's `POST /__sandbox/fields` (added for drift tests): the field is described, writable, and kept
across a restart; bad requests are refused."""
from __future__ import annotations

from pathlib import Path

import pytest
import requests

from tests.sandbox_salesforce.conftest import launch


def _describe(sandbox, obj: str) -> dict:
    token = sandbox.session().post(f"{sandbox.base_url}/services/oauth2/token", data={
        "grant_type": "password", "client_id": sandbox.credentials.client_id,
        "client_secret": sandbox.credentials.client_secret, "username": sandbox.credentials.username,
        "password": sandbox.credentials.password + sandbox.credentials.security_token}, timeout=30).json()
    response = sandbox.session().get(f"{sandbox.base_url}/services/data/v59.0/sobjects/{obj}/describe",
                                     headers={"Authorization": f"Bearer {token['access_token']}"}, timeout=30)
    return {f["name"]: f for f in response.json()["fields"]}


def test_added_field_is_described_and_survives_a_restart(tmp_path: Path) -> None:
    sandbox = launch(tmp_path / "salesforce")
    try:
        assert "Score__c" not in _describe(sandbox, "Lead")
        sandbox.admin("fields", {"object": "Lead", "name": "Score__c", "type": "double", "label": "Score"})
        assert _describe(sandbox, "Lead")["Score__c"]["type"] == "double"
        with pytest.raises(requests.HTTPError):
            sandbox.admin("fields", {"object": "Lead", "name": "NoSuffix", "type": "string"})
        with pytest.raises(requests.HTTPError):
            sandbox.admin("fields", {"object": "Lead", "name": "Pic__c", "type": "picklist"})
    finally:
        sandbox.stop()
    restarted = launch(tmp_path / "salesforce")
    try:
        assert _describe(restarted, "Lead")["Score__c"]["label"] == "Score"
    finally:
        restarted.stop()
