"""Logins and sessions: the OAuth token endpoint, SOAP partner login, token revocation, session checks.

Grants (POST /services/oauth2/token, form-encoded):
  * password            client_id, client_secret, username, password (= password + security token)
  * client_credentials  Authorization: Basic base64(client_id:client_secret) (or the two form fields);
                        runs as the API user
  * refresh_token       client_id, refresh_token (client_secret checked when sent)
  * jwt-bearer          assertion = RS256 JWT. Checked: iss == client id, sub == the API username,
                        aud is a Salesforce login URL (https://login|test.salesforce.com, any
                        https://<x>.salesforce.com, or this sandbox's own URL), exp in the future. The signature
                        is verified only when settings.json names a `jwt_certificate` (PEM); otherwise any
                        signature is accepted, which keeps local setups key-free.
Unlike Salesforce, the password grant also returns a refresh token, so refresh-token clients can be tested
without a browser (Salesforce only issues them through the web-server flow).

Tokens are random; only their SHA-256 is stored (table `_tokens`), so the state directory holds no usable
secret. Sessions expire after `session_lifetime_seconds` without use (Salesforce's inactivity timeout) and
survive restarts. Nothing secret is ever logged: log lines name the username and grant only.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
import xml.etree.ElementTree as ET
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jwt
from starlette.requests import Request
from starlette.responses import Response

from .context import Sandbox, json_response
from .errors import invalid_session
from .settings import Credentials, SandboxSettings
from .store import Store

log = logging.getLogger("crmsync.sandbox.salesforce")
_PARTNER_NS = "urn:partner.soap.sforce.com"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


class OAuthError(Exception):
    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error, self.description, self.status = error, description, status


class Auth:
    """Issues, checks and revokes tokens for the sandbox's single API user."""

    def __init__(self, store: Store, settings: SandboxSettings, credentials: Credentials, org_id: str,
                 user_id: str) -> None:
        self.store, self.settings, self.credentials = store, settings, credentials
        self.org_id, self.user_id = org_id, user_id
        store.conn.execute("CREATE TABLE IF NOT EXISTS _tokens (hash TEXT PRIMARY KEY, kind TEXT NOT NULL, "
                           "user_id TEXT NOT NULL, parent TEXT, issued REAL NOT NULL, last_used REAL NOT NULL, "
                           "revoked INTEGER NOT NULL DEFAULT 0)")

    # ---- tokens

    def issue(self, kind: str, parent: str | None = None) -> str:
        token = (f"{self.org_id[:15]}!AQ" if kind == "access" else "5Aep861") + secrets.token_urlsafe(48)
        now = self._now()
        self.store.conn.execute("INSERT INTO _tokens (hash, kind, user_id, parent, issued, last_used) "
                                "VALUES (?, ?, ?, ?, ?, ?)", (_digest(token), kind, self.user_id, parent, now, now))
        return token

    def check_access(self, token: str | None) -> str:
        """The user id behind a live access token; raises 401 INVALID_SESSION_ID otherwise."""
        if not token:
            raise invalid_session()
        row = self.store.conn.execute("SELECT user_id, last_used FROM _tokens WHERE hash = ? AND kind = 'access' "
                                      "AND revoked = 0", (_digest(token),)).fetchone()
        now = self._now()
        if row is None or now - row[1] > self.settings.session_lifetime_seconds:
            raise invalid_session()
        if now - row[1] > 60:  # sliding expiry; one write a minute per session is plenty
            self.store.conn.execute("UPDATE _tokens SET last_used = ? WHERE hash = ?", (now, _digest(token)))
        return str(row[0])

    def redeem_refresh(self, token: str) -> str:
        """Check a refresh token; returns its digest (the parent of the access tokens minted from it)."""
        row = self.store.conn.execute("SELECT issued FROM _tokens WHERE hash = ? AND kind = 'refresh' "
                                      "AND revoked = 0", (_digest(token),)).fetchone()
        lifetime = self.settings.refresh_token_lifetime_seconds
        if row is None or (lifetime is not None and self._now() - row[0] > lifetime):
            raise OAuthError("invalid_grant", "expired access/refresh token")
        return _digest(token)

    def revoke(self, token: str) -> bool:
        """Revoke a token; revoking a refresh token also ends the sessions minted from it."""
        digest = _digest(token)
        cur = self.store.conn.execute("UPDATE _tokens SET revoked = 1 WHERE hash = ? OR parent = ?",
                                      (digest, digest))
        return cur.rowcount > 0

    def expire_all(self, *, refresh_tokens: bool = False) -> int:
        kinds = ("access", "refresh") if refresh_tokens else ("access",)
        cur = self.store.conn.execute(f"UPDATE _tokens SET revoked = 1 WHERE revoked = 0 AND kind IN "
                                      f"({','.join('?' * len(kinds))})", kinds)
        return cur.rowcount

    def _now(self) -> float:
        return self.store.now().timestamp()

    # ---- credential checks (constant-time; never logged)

    def password_ok(self, username: str, password: str) -> bool:
        expected = self.credentials.password + self.credentials.security_token
        return username.lower() == self.credentials.username.lower() and _same(password, expected)

    def client_ok(self, client_id: str | None, client_secret: str | None, *, secret_required: bool) -> None:
        if client_id != self.credentials.client_id:
            raise OAuthError("invalid_client_id", "client identifier invalid")
        if (client_secret is not None or secret_required) and not _same(client_secret or "",
                                                                        self.credentials.client_secret):
            raise OAuthError("invalid_client", "invalid client credentials")

    def check_assertion(self, assertion: str, base_url: str) -> None:
        """Validate a JWT bearer assertion's claims (and signature when a certificate is configured)."""
        try:
            key, options = self._jwt_key()
            claims = jwt.decode(assertion, key=key, algorithms=["RS256"], options=options)
            exp = float(claims.get("exp", 0))
        except (jwt.PyJWTError, TypeError, ValueError):
            raise OAuthError("invalid_grant", "invalid assertion") from None
        if claims.get("iss") != self.credentials.client_id:
            raise OAuthError("invalid_client_id", "client identifier invalid")
        if str(claims.get("sub", "")).lower() != self.credentials.username.lower():
            raise OAuthError("invalid_grant", "user hasn't approved this consumer")
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if not any(isinstance(a, str) and (a.rstrip("/").endswith(".salesforce.com") or a.rstrip("/") == base_url)
                   for a in audiences):
            raise OAuthError("invalid_grant", "audience is invalid")
        if exp < self._now():
            raise OAuthError("invalid_grant", "expired authorization code")

    def _jwt_key(self) -> tuple[Any, dict[str, bool]]:
        # exp/aud/iss are checked by hand above: simple-salesforce sends exp as a string, which PyJWT rejects
        options = {"verify_exp": False, "verify_aud": False, "verify_iss": False, "verify_sub": False}
        if not self.settings.jwt_certificate:
            return None, {**options, "verify_signature": False}
        from cryptography import x509
        cert = x509.load_pem_x509_certificate(Path(self.settings.jwt_certificate).read_bytes())
        return cert.public_key(), options

    # ---- responses

    def token_payload(self, base_url: str, access: str, refresh: str | None = None) -> dict[str, Any]:
        issued_at = str(int(time.time() * 1000))
        identity = f"{base_url}/id/{self.org_id}/{self.user_id}"
        signature = hmac.new(self.credentials.client_secret.encode(), (identity + issued_at).encode(),
                             hashlib.sha256).digest()
        payload = {"access_token": access, "instance_url": base_url, "id": identity, "token_type": "Bearer",
                   "issued_at": issued_at, "signature": base64.b64encode(signature).decode(),
                   "scope": "api refresh_token full"}
        if refresh:
            payload["refresh_token"] = refresh
        return payload


# ---------------------------------------------------------------- endpoints


def base_url(request: Request) -> str:
    """This sandbox's own https URL as the client reached it (instance_url / serverUrl point back here)."""
    return f"https://{request.headers.get('host') or request.url.netloc}"


async def oauth_token(request: Request) -> Response:
    sandbox: Sandbox = request.app.state.sandbox
    form = _form(await request.body())
    grant = form.get("grant_type", "")
    try:
        payload = await sandbox.worker.run(_grant, sandbox.auth, grant, form,
                                           request.headers.get("authorization", ""), base_url(request))
    except OAuthError as exc:
        log.info("OAuth %s grant refused: %s", grant or "(none)", exc.error)
        return json_response({"error": exc.error, "error_description": exc.description}, status=exc.status)
    log.info("OAuth %s grant: session issued for %s", grant, sandbox.credentials.username)
    return json_response(payload)


def _grant(auth: Auth, grant: str, form: dict[str, str], authorization: str, base: str) -> dict[str, Any]:
    if grant == "password":
        auth.client_ok(form.get("client_id"), form.get("client_secret"), secret_required=True)
        if not auth.password_ok(form.get("username", ""), form.get("password", "")):
            raise OAuthError("invalid_grant", "authentication failure")
        return auth.token_payload(base, auth.issue("access"), auth.issue("refresh"))
    if grant == "client_credentials":
        client_id, secret = _basic(authorization) or (form.get("client_id"), form.get("client_secret"))
        auth.client_ok(client_id, secret, secret_required=True)
        return auth.token_payload(base, auth.issue("access"))
    if grant == "refresh_token":
        auth.client_ok(form.get("client_id"), form.get("client_secret"), secret_required=False)
        parent = auth.redeem_refresh(form.get("refresh_token", ""))
        return auth.token_payload(base, auth.issue("access", parent=parent))
    if grant == JWT_GRANT:
        auth.check_assertion(form.get("assertion", ""), base)
        return auth.token_payload(base, auth.issue("access"))
    raise OAuthError("unsupported_grant_type", "grant type not supported")


async def oauth_revoke(request: Request) -> Response:
    sandbox: Sandbox = request.app.state.sandbox
    token = _form(await request.body()).get("token") or request.query_params.get("token", "")
    if not token or not await sandbox.worker.run(sandbox.auth.revoke, token):
        return json_response({"error": "unsupported_token_type", "error_description": "this token type is not "
                              "supported"}, status=400)
    return Response(status_code=200)


async def soap_login(request: Request) -> Response:
    """Partner API `login`, answered the way simple-salesforce parses it (un-prefixed sessionId/serverUrl)."""
    sandbox: Sandbox = request.app.state.sandbox
    version = request.path_params["version"]
    try:
        root = ET.fromstring(await request.body())
    except ET.ParseError:
        return _soap_fault("INVALID_REQUEST", "Unable to parse the SOAP request", "soapenv:Client")
    login = next((e for e in root.iter() if _local(e.tag) == "login"), None)
    if login is None:
        return _soap_fault("INVALID_OPERATION", "The crmsync sandbox implements only the SOAP login call",
                           "soapenv:Client")
    fields = {_local(e.tag): (e.text or "") for e in login}
    if not sandbox.auth.password_ok(fields.get("username", ""), fields.get("password", "")):
        log.info("SOAP login refused for %s", fields.get("username", ""))
        return _soap_fault("INVALID_LOGIN", "Invalid username, password, security token; or user locked out.")
    session = await sandbox.worker.run(sandbox.auth.issue, "access")
    log.info("SOAP login: session issued for %s", sandbox.credentials.username)
    return _soap_response(_login_result(sandbox, base_url(request), version, session))


def _login_result(sandbox: Sandbox, base: str, version: str, session: str) -> str:
    """LoginResult with its elements in the partner WSDL's order (LoginResult, then GetUserInfoResult: clients
    such as Salesforce's own Pub/Sub quick-start read `result[3]`, `result[4]` and `userInfo[8]` by position).
    https://developer.salesforce.com/docs/atlas.en-us.api.meta/api/sforce_api_calls_login_loginresult.htm and
    .../sforce_api_calls_getuserinfo_getuserinforesult.htm"""
    org15, username = sandbox.org_id[:15], escape(sandbox.credentials.username)
    user_info = [
        ("accessibilityMode", "false"), ("chatterExternal", "false"), ("currencySymbol", "$"),
        ("orgAttachmentFileSizeLimit", "5242880"), ("orgDefaultCurrencyIsoCode", "USD"),
        ("orgDefaultCurrencyLocale", "en_US"), ("orgDisallowHtmlAttachments", "false"),
        ("orgHasPersonAccounts", "false"), ("organizationId", sandbox.org_id),
        ("organizationMultiCurrency", "false"), ("organizationName", escape(sandbox.settings.org_name)),
        ("profileId", "00e5g000000000AAA"), ("roleId", None),
        ("sessionSecondsValid", str(sandbox.settings.session_lifetime_seconds)),
        ("userDefaultCurrencyIsoCode", None), ("userEmail", username), ("userFullName", "Integration API User"),
        ("userId", sandbox.api_user_id), ("userLanguage", "en_US"), ("userLocale", "en_US"),
        ("userName", username), ("userTimeZone", "Europe/London"), ("userType", "Standard"),
        ("userUiSkin", "Theme3"),
    ]
    info = "".join(f'<{name} xsi:nil="true"/>' if value is None else f"<{name}>{value}</{name}>"
                   for name, value in user_info)
    return (
        f"<loginResponse><result>"
        f"<metadataServerUrl>{base}/services/Soap/m/{version}/{org15}</metadataServerUrl>"
        f"<passwordExpired>false</passwordExpired>"
        f"<sandbox>{str(sandbox.settings.is_sandbox).lower()}</sandbox>"
        f"<serverUrl>{base}/services/Soap/u/{version}/{org15}</serverUrl>"
        f"<sessionId>{escape(session)}</sessionId><userId>{sandbox.api_user_id}</userId>"
        f"<userInfo>{info}</userInfo>"
        f"</result></loginResponse>"
    )


def _soap_response(body: str) -> Response:
    xml = ('<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
           'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
           f'xmlns="{_PARTNER_NS}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
           f'<soapenv:Body>{body}</soapenv:Body></soapenv:Envelope>')
    return Response(xml, media_type="text/xml;charset=UTF-8")


def _soap_fault(code: str, message: str, faultcode: str | None = None) -> Response:
    xml = ('<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
           'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:sf="urn:fault.partner.soap.sforce.com" '
           'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault>'
           f'<faultcode>{faultcode or "sf:" + code}</faultcode><faultstring>{code}: {escape(message)}</faultstring>'
           f'<detail><sf:LoginFault xsi:type="sf:LoginFault"><sf:exceptionCode>{code}</sf:exceptionCode>'
           f'<sf:exceptionMessage>{escape(message)}</sf:exceptionMessage></sf:LoginFault></detail>'
           '</soapenv:Fault></soapenv:Body></soapenv:Envelope>')
    return Response(xml, status_code=500, media_type="text/xml;charset=UTF-8")


# ---------------------------------------------------------------- helpers


def _form(body: bytes) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}


def _basic(authorization: str) -> tuple[str, str] | None:
    if not authorization.lower().startswith("basic "):
        return None
    try:
        client_id, _, secret = base64.b64decode(authorization[6:].strip()).decode().partition(":")
    except ValueError:
        return None
    return client_id, secret


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())
