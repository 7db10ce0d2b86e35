"""Microsoft Entra ID on the sandbox, driven by Microsoft's own libraries (MSAL, azure-identity) and raw HTTP.

MSAL talks to `login.microsoftonline.com` for instance discovery and the user realm and drops a custom
authority's port in those URLs, so the MSAL tests use the real authority host and hand MSAL a session that
connects that one name to the sandbox (hosts.py); azure-identity is pointed at the sandbox with `authority=`.
"""
from __future__ import annotations

import time
import uuid

import jwt
import msal
import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import CertificateCredential, ClientSecretCredential
from cryptography.hazmat.primitives import hashes

from .conftest import LOGIN_HOST, ORG_HOST, RunningSandbox, make_certificate
from .hosts import pinned_session

ORG_SCOPE = f"https://{ORG_HOST}/.default"


def _msal_session(sandbox: RunningSandbox):
    return pinned_session(sandbox.ca_path, {LOGIN_HOST: ("127.0.0.1", sandbox.port)})


def _claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def _whoami(sandbox: RunningSandbox, token: str) -> dict:
    response = sandbox.session().get(f"{sandbox.api}/WhoAmI", headers={"Authorization": f"Bearer {token}"},
                                     timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_msal_client_secret_through_the_real_authority_host(sandbox: RunningSandbox) -> None:
    c = sandbox.credentials
    app = msal.ConfidentialClientApplication(c.client_id, client_credential=c.client_secret,
                                             authority=f"https://{LOGIN_HOST}/{c.tenant_id}",
                                             http_client=_msal_session(sandbox))
    first = app.acquire_token_for_client(scopes=[ORG_SCOPE])
    assert first.get("token_source") == "identity_provider", first
    assert first["expires_in"] > 3000 and first["token_type"] == "Bearer"
    assert app.acquire_token_for_client(scopes=[ORG_SCOPE])["token_source"] == "cache"
    claims = _claims(first["access_token"])
    assert claims["aud"] == f"https://{ORG_HOST}" and claims["tid"] == c.tenant_id and claims["idtyp"] == "app"
    assert _whoami(sandbox, first["access_token"])["UserId"]


@pytest.mark.parametrize("send_public_certificate", [False, True], ids=["x5t-RS256", "x5t#S256-PS256"])
def test_msal_certificate_credential(sandbox: RunningSandbox, send_public_certificate: bool) -> None:
    c, cert = sandbox.credentials, sandbox.certificate
    assert cert is not None
    credential = {"private_key": cert.key_pem, "thumbprint": cert.sha1_thumbprint}
    if send_public_certificate:  # MSAL then signs PS256 with an x5t#S256 header
        credential["public_certificate"] = cert.cert_pem
    app = msal.ConfidentialClientApplication(c.client_id, client_credential=credential,
                                             authority=f"https://{LOGIN_HOST}/{c.tenant_id}",
                                             http_client=_msal_session(sandbox))
    result = app.acquire_token_for_client(scopes=[ORG_SCOPE])
    assert "access_token" in result, result
    assert _claims(result["access_token"])["appid"] == c.client_id


def test_msal_password_grant_with_user_realm_and_refresh(sandbox: RunningSandbox) -> None:
    c = sandbox.credentials
    app = msal.PublicClientApplication(c.client_id, authority=f"https://{LOGIN_HOST}/organizations",
                                       http_client=_msal_session(sandbox))
    scopes = [f"https://{ORG_HOST}/user_impersonation"]
    with pytest.warns(DeprecationWarning):  # MSAL discourages ROPC; Campaign's Dynamics account uses it
        result = app.acquire_token_by_username_password(c.username, c.password, scopes=scopes)
    assert "access_token" in result and "refresh_token" in result, result
    assert result["id_token_claims"]["preferred_username"] == c.username
    accounts = app.get_accounts()  # built from id_token + client_info
    assert [a["username"] for a in accounts] == [c.username]
    refreshed = app.acquire_token_silent(scopes, account=accounts[0], force_refresh=True)
    assert refreshed and refreshed["token_source"] == "identity_provider"
    assert refreshed["access_token"] != result["access_token"]
    user_id = _whoami(sandbox, refreshed["access_token"])["UserId"]
    app_user_id = _whoami(sandbox, sandbox.token())["UserId"]
    assert user_id != app_user_id  # the user and the application user are different systemusers
    with pytest.warns(DeprecationWarning):
        wrong = app.acquire_token_by_username_password(c.username, "not-the-password", scopes=scopes)
    assert wrong["error"] == "invalid_grant" and wrong["error_codes"] == [50126]


def test_msal_custom_authority_with_instance_discovery(sandbox: RunningSandbox) -> None:
    """An authority on the sandbox's own host and port: MSAL validates it at login.microsoftonline.com."""
    c = sandbox.credentials
    app = msal.ConfidentialClientApplication(c.client_id, client_credential=c.client_secret,
                                             authority=sandbox.authority, http_client=_msal_session(sandbox))
    result = app.acquire_token_for_client(scopes=[f"{sandbox.base_url}/.default"])
    assert "access_token" in result, result
    discovery = sandbox.session().get(f"{sandbox.base_url}/common/discovery/instance", timeout=30, params={
        "api-version": "1.1", "authorization_endpoint": "https://unknown.example/common/oauth2/authorize"})
    assert discovery.status_code == 400 and discovery.json()["error"] == "invalid_instance"


def test_azure_identity_credentials_with_sandbox_authority(sandbox: RunningSandbox) -> None:
    c, cert = sandbox.credentials, sandbox.certificate
    assert cert is not None
    common = {"authority": sandbox.base_url, "disable_instance_discovery": True,
              "connection_verify": str(sandbox.ca_path)}
    secret = ClientSecretCredential(c.tenant_id, c.client_id, c.client_secret, **common)
    token = secret.get_token(f"{sandbox.base_url}/.default")
    assert token.expires_on > time.time() + 3000
    assert _whoami(sandbox, token.token)["UserId"]
    pem = (cert.key_pem + cert.cert_pem).encode()
    for chain in (False, True):
        credential = CertificateCredential(c.tenant_id, c.client_id, certificate_data=pem,
                                           send_certificate_chain=chain, **common)
        assert _whoami(sandbox, credential.get_token(f"{sandbox.base_url}/.default").token)["UserId"]
    wrong = ClientSecretCredential(c.tenant_id, c.client_id, "wrong-secret", **common)
    with pytest.raises(ClientAuthenticationError, match="AADSTS7000215"):
        wrong.get_token(f"{sandbox.base_url}/.default")


def test_an_unregistered_certificate_is_refused(sandbox: RunningSandbox, tmp_path) -> None:
    c, other = sandbox.credentials, make_certificate(tmp_path, "other")
    credential = CertificateCredential(c.tenant_id, c.client_id,
                                       certificate_data=(other.key_pem + other.cert_pem).encode(),
                                       authority=sandbox.base_url, disable_instance_discovery=True,
                                       connection_verify=str(sandbox.ca_path))
    with pytest.raises(ClientAuthenticationError, match="AADSTS700027"):
        credential.get_token(f"{sandbox.base_url}/.default")


def _assertion(sandbox: RunningSandbox, *, aud: str | None = None, exp_offset: int = 600,
               key_pem: str | None = None) -> str:
    c, cert = sandbox.credentials, sandbox.certificate
    assert cert is not None
    now = int(time.time())
    from cryptography import x509
    import base64
    thumb = x509.load_pem_x509_certificate(cert.cert_path.read_bytes()).fingerprint(hashes.SHA1())  # nosec
    header = {"x5t": base64.urlsafe_b64encode(thumb).rstrip(b"=").decode()}
    claims = {"aud": aud or f"{sandbox.authority}/oauth2/v2.0/token", "iss": c.client_id, "sub": c.client_id,
              "jti": str(uuid.uuid4()), "nbf": now - 10, "exp": now + exp_offset}
    return jwt.encode(claims, key_pem or cert.key_pem, algorithm="RS256", headers=header)


def _assertion_grant(sandbox: RunningSandbox, assertion: str):
    c = sandbox.credentials
    return sandbox.session().post(f"{sandbox.authority}/oauth2/v2.0/token", timeout=30, data={
        "grant_type": "client_credentials", "client_id": c.client_id, "scope": f"{sandbox.base_url}/.default",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion})


def test_client_assertion_checks(sandbox: RunningSandbox, tmp_path) -> None:
    assert _assertion_grant(sandbox, _assertion(sandbox)).status_code == 200
    cases = {
        50013: _assertion(sandbox, aud="https://elsewhere.example/token"),
        700024: _assertion(sandbox, exp_offset=-60),
        700027: _assertion(sandbox, key_pem=make_certificate(tmp_path, "forger").key_pem),  # right x5t, wrong key
    }
    for code, assertion in cases.items():
        response = _assertion_grant(sandbox, assertion)
        body = response.json()
        assert response.status_code == 401 and body["error"] == "invalid_client", body
        assert body["error_codes"] == [code] and body["error_description"].startswith(f"AADSTS{code}:")
        assert {"timestamp", "trace_id", "correlation_id"} <= set(body)


def test_token_endpoint_errors_and_v1_form(sandbox: RunningSandbox) -> None:
    c, session = sandbox.credentials, sandbox.session()
    base = {"grant_type": "client_credentials", "client_id": c.client_id, "client_secret": c.client_secret}

    def post(tenant: str, data: dict, version: str = "/v2.0"):
        return session.post(f"{sandbox.base_url}/{tenant}/oauth2{version}/token", data=data, timeout=30)

    cases = [
        (post("no-such-tenant", {**base, "scope": ORG_SCOPE}), 90002),
        (post(c.tenant_id, {**base, "scope": f"https://{ORG_HOST}/user_impersonation"}), 1002012),
        (post(c.tenant_id, {**base, "scope": "https://other.crm.dynamics.com/.default"}), 500011),
        (post(c.tenant_id, {**base, "client_id": str(uuid.uuid4()), "scope": ORG_SCOPE}), 700016),
        (post(c.tenant_id, {"client_id": c.client_id, "scope": ORG_SCOPE}), 900144),
    ]
    for response, code in cases:
        assert response.status_code == 400 and response.json()["error_codes"] == [code], response.text
    v1 = post(c.tenant_id, {**base, "resource": f"https://{ORG_HOST}/"}, version="")
    body = v1.json()
    assert v1.status_code == 200 and body["resource"] == f"https://{ORG_HOST}"
    assert isinstance(body["expires_in"], str) and int(body["expires_on"]) > time.time()
    config = session.get(f"{sandbox.base_url}/{c.tenant_id}/v2.0/.well-known/openid-configuration", timeout=30)
    assert config.json()["token_endpoint"] == f"{sandbox.authority}/oauth2/v2.0/token"
    realm = session.get(f"{sandbox.base_url}/common/userrealm/{c.username}?api-version=1.0", timeout=30).json()
    assert realm["account_type"] == "Managed"


def test_web_api_refuses_missing_foreign_and_expired_tokens(admin_reset: RunningSandbox) -> None:
    sandbox, session = admin_reset, admin_reset.session()
    missing = session.get(f"{sandbox.api}/WhoAmI", timeout=30)
    assert missing.status_code == 401
    challenge = missing.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer authorization_uri=https://") and f"resource_id=https://{ORG_HOST}/" in challenge
    foreign = sandbox.token(resource=f"https://{ORG_HOST}")  # the environment URL is also a valid audience
    assert session.get(f"{sandbox.api}/WhoAmI", headers={"Authorization": f"Bearer {foreign}"},
                       timeout=30).status_code == 200
    forged = jwt.encode({"aud": sandbox.base_url, "exp": time.time() + 600}, "x" * 32, algorithm="HS256")
    assert session.get(f"{sandbox.api}/WhoAmI", headers={"Authorization": f"Bearer {forged}"},
                       timeout=30).status_code == 401
    token = sandbox.token()
    sandbox.admin("expire-tokens", {})
    expired = session.get(f"{sandbox.api}/WhoAmI", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert expired.status_code == 401 and expired.json()["error"]["code"]
    assert _whoami(sandbox, sandbox.token())["UserId"]
