"""Microsoft Entra ID, as far as Dataverse clients need it: discovery, the token endpoint, and token checks.

Endpoints (same server as the Web API; `{tenant}` is the tenant id, its domain, `organizations` or `common`):

  GET  /{tenant}/v2.0/.well-known/openid-configuration     OpenID configuration (v2 endpoints)
  GET  /{tenant}/.well-known/openid-configuration          the same for v1
  GET  /common/discovery/instance?authorization_endpoint=  instance discovery (MSAL's authority validation)
  GET  /common/userrealm/{username}?api-version=1.0        user realm (MSAL, before the password grant)
  GET  /{tenant}/discovery/v2.0/keys, /{tenant}/discovery/keys   the token-signing key (JWKS)
  POST /{tenant}/oauth2/v2.0/token                         grants: client_credentials (client secret, or a
                                                           certificate `client_assertion`), password,
                                                           refresh_token
  POST /{tenant}/oauth2/token                              the v1 form (`resource=` instead of `scope=`)

Shapes follow learn.microsoft.com/entra/identity-platform: v2-oauth2-client-creds-grant-flow (secret and
certificate requests, the error response), certificate-credentials (assertion header `x5t` / `x5t#S256`, claims
aud/iss/sub/exp/nbf/jti), v2-oauth-ropc (password grant), v2-oauth2-auth-code-flow#refresh-the-access-token,
id-token-claims-reference and reference-error-codes (AADSTS codes).

Choices where Entra is silent or cannot be copied (docs/dynamics.md): the v2 and v1 endpoints both issue v1-style
access tokens (`iss` https://sts.windows.net/{tenant}/, `aud` = the resource), which is what Dataverse receives;
a client assertion whose `aud` is not this tenant's token endpoint is refused with AADSTS50013; the app allows
public-client flows (Campaign's setup asks for `allowPublicClient`), so the password grant needs no secret.

Tokens are RS256 JWTs signed by a key kept in `<state>/token-signing-key.pem` (0600, made on first start), so
they stay valid across restarts. Refresh tokens are random; only their SHA-256 is stored. Nothing secret is
logged: log lines name the grant and the AADSTS code only.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .settings import Credentials, OrgSettings
from .store import Store

log = logging.getLogger("crmsync.sandbox.dynamics")
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
OIDC_SCOPES = {"openid", "profile", "offline_access", "email"}
MICROSOFT_HOSTS = ("login.microsoftonline.com", "login.windows.net", "login.microsoft.com", "sts.windows.net")
SIGNING_KEY_FILE = "token-signing-key.pem"
SIGNING_CERT_FILE = "token-signing-cert.pem"


class EntraError(Exception):
    """An AADSTS error, rendered in Entra's JSON shape."""

    def __init__(self, error: str, code: int, message: str, status: int = 400) -> None:
        super().__init__(f"{error}: AADSTS{code}")
        self.error, self.code, self.message, self.status = error, code, message, status

    def body(self) -> dict[str, Any]:
        trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
        return {"error": self.error,
                "error_description": f"AADSTS{self.code}: {self.message} Trace ID: {trace} Correlation ID: "
                                     f"{correlation} Timestamp: {stamp}",
                "error_codes": [self.code], "timestamp": stamp, "trace_id": trace, "correlation_id": correlation,
                "error_uri": f"https://login.microsoftonline.com/error?code={self.code}"}


@dataclass(frozen=True)
class Principal:
    """Who a valid access token stands for."""
    user_id: str  # the systemuser behind it (the API user, or the application user for app tokens)
    app_only: bool
    issued_at: float


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


class Entra:
    """The tenant: one app registration (secret and optional certificate), one user, one signing key."""

    def __init__(self, state_dir: Path, store: Store, settings: OrgSettings, credentials: Credentials,
                 ids: dict[str, str], host_names: tuple[str, ...]) -> None:
        self.store, self.settings, self.credentials, self.ids = store, settings, credentials, ids
        self.host_names = tuple(n.lower() for n in host_names)
        self.key, self.cert = _signing_key(Path(state_dir))
        self.kid = _b64url(self.cert.fingerprint(hashes.SHA1()))  # nosec: an identifier, as Entra's x5t
        self.registered = _load_certificate(credentials.certificate) if credentials.certificate else None
        self.revoked_before = 0.0  # tokens issued before this (sandbox clock) are refused: admin/faults
        self.user_object_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"user:{credentials.username.lower()}"))
        self.app_object_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"app:{credentials.client_id}"))
        store.conn.execute("CREATE TABLE IF NOT EXISTS _refresh_tokens (hash TEXT PRIMARY KEY, resource TEXT, "
                           "issued REAL NOT NULL, revoked INTEGER NOT NULL DEFAULT 0)")

    # ------------------------------------------------------------ tenant and hosts

    def tenant_matches(self, tenant: str) -> bool:
        lowered = tenant.lower()
        domain = self.credentials.username.rpartition("@")[2].lower()
        return lowered in (self.credentials.tenant_id.lower(), "organizations", "common", domain)

    def require_tenant(self, tenant: str) -> None:
        if not self.tenant_matches(tenant):
            raise EntraError("invalid_request", 90002, f"Tenant '{tenant}' not found. Check to make sure you have "
                             "the correct tenant ID and are signing into the correct cloud.")

    def serves(self, host: str) -> bool:
        """Whether `host` (no port) names this sandbox: its own names or the Microsoft login hosts."""
        return host.lower() in self.host_names or host.lower() in MICROSOFT_HOSTS

    def resource_known(self, resource: str) -> bool:
        parts = urlsplit(resource.rstrip("/"))
        if parts.scheme != "https" or not parts.hostname:
            return False
        if f"https://{parts.netloc.lower()}" == self.settings.org_url:
            return True
        return parts.hostname.lower() in self.host_names

    # ------------------------------------------------------------ tokens

    def now(self) -> float:
        return self.store.now().timestamp()

    def access_token(self, resource: str, *, app_only: bool, issuer_host: str) -> str:
        issued = self.now()
        now = int(issued)
        user = self.ids["app_user_id"] if app_only else self.ids["user_id"]
        claims: dict[str, Any] = {
            "aud": resource.rstrip("/"), "iss": f"https://sts.windows.net/{self.credentials.tenant_id}/",
            "iat": now, "nbf": now, "exp": now + self.settings.access_token_lifetime_seconds,
            "appid": self.credentials.client_id, "appidacr": "2" if app_only else "0",
            "idtyp": "app" if app_only else "user", "tid": self.credentials.tenant_id, "ver": "1.0",
            "oid": self.app_object_id if app_only else self.user_object_id,
            "sub": self.app_object_id if app_only else self.user_object_id, "crmsync_user": user,
            "crmsync_issued": issued,  # sub-second issue time: tokens minted after expire_all() stay valid
            "uti": secrets.token_urlsafe(16), "rh": "sandbox", "idp": f"https://{issuer_host}/",
        }
        if not app_only:
            claims.update(scp="user_impersonation", upn=self.credentials.username,
                          unique_name=self.credentials.username, name="Integration User")
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid, "x5t": self.kid})

    def id_token(self, issuer: str) -> str:
        now = int(self.now())
        claims = {"aud": self.credentials.client_id, "iss": issuer, "iat": now, "nbf": now, "exp": now + 3600,
                  "name": "Integration User", "oid": self.user_object_id, "sub": self.user_object_id,
                  "preferred_username": self.credentials.username, "tid": self.credentials.tenant_id, "ver": "2.0"}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})

    def client_info(self) -> str:
        return _b64url(json.dumps({"uid": self.user_object_id, "utid": self.credentials.tenant_id}).encode())

    def verify(self, token: str, request_host: str) -> Principal | None:
        """The principal behind a Web API bearer token, or None when it is invalid, expired or for elsewhere."""
        try:
            claims = jwt.decode(token, self.cert.public_key(), algorithms=["RS256"],
                                options={"verify_aud": False, "verify_exp": False, "verify_nbf": False,
                                         "verify_iat": False})
        except jwt.PyJWTError:
            return None
        now = self.now()
        if float(claims.get("exp", 0)) <= now or float(claims.get("crmsync_issued", 0)) < self.revoked_before:
            return None
        audience = str(claims.get("aud", "")).rstrip("/")
        host = (urlsplit(audience).hostname or "").lower()
        if audience != self.settings.org_url and host != request_host.lower().partition(":")[0] and \
                not (request_host.startswith("[") and host == request_host[1:].partition("]")[0]):
            return None
        return Principal(str(claims.get("crmsync_user")), claims.get("idtyp") == "app", float(claims["iat"]))

    def issue_refresh(self, resource: str) -> str:
        token = "0.A" + secrets.token_urlsafe(96)
        self.store.conn.execute("INSERT INTO _refresh_tokens (hash, resource, issued) VALUES (?, ?, ?)",
                                (_digest(token), resource, self.now()))
        return token

    def redeem_refresh(self, token: str) -> str:
        """Consume a refresh token (they rotate); returns the resource it was issued for."""
        row = self.store.conn.execute("SELECT resource, issued FROM _refresh_tokens WHERE hash = ? AND revoked = 0",
                                      (_digest(token),)).fetchone()
        if row is None:
            raise EntraError("invalid_grant", 9002313, "Invalid request. Request is malformed or invalid.")
        if self.now() - float(row[1]) > self.settings.refresh_token_lifetime_seconds or \
                float(row[1]) < self.revoked_before:
            raise EntraError("invalid_grant", 700082, "The refresh token has expired due to inactivity. The token "
                             "was issued on a date and was inactive for the configured lifetime.")
        self.store.conn.execute("UPDATE _refresh_tokens SET revoked = 1 WHERE hash = ?", (_digest(token),))
        return str(row[0])

    def expire_all(self) -> None:
        """Make every token issued so far invalid (admin lever and the token-expiry fault)."""
        self.revoked_before = self.now()

    # ------------------------------------------------------------ client authentication

    def check_client_id(self, client_id: str | None, tenant: str) -> None:
        if not client_id:
            raise EntraError("invalid_request", 900144, "The request body must contain the following parameter: "
                             "'client_id'.")
        if client_id != self.credentials.client_id:
            raise EntraError("unauthorized_client", 700016, f"Application with identifier '{client_id}' was not "
                             f"found in the directory '{tenant}'. This can happen if the application has not been "
                             "installed by the administrator of the tenant or consented to by any user in the "
                             "tenant. You may have sent your authentication request to the wrong tenant.")

    def authenticate_client(self, form: dict[str, str], token_endpoints: tuple[str, ...], *, required: bool) -> bool:
        """Check the client secret or certificate assertion; True when the client proved who it is."""
        secret, assertion = form.get("client_secret"), form.get("client_assertion")
        if assertion is not None:
            if form.get("client_assertion_type") != ASSERTION_TYPE:
                raise EntraError("invalid_request", 50027, "JWT token is invalid or malformed: "
                                 f"client_assertion_type must be '{ASSERTION_TYPE}'.")
            self.check_assertion(assertion, token_endpoints)
            return True
        if secret is not None:
            if not _same(secret, self.credentials.client_secret):
                raise EntraError("invalid_client", 7000215, "Invalid client secret provided. Ensure the secret "
                                 "being sent in the request is the client secret value, not the client secret ID, "
                                 f"for a secret added to app '{self.credentials.client_id}'.", status=401)
            return True
        if required:
            raise EntraError("invalid_client", 7000218, "The request body must contain the following parameter: "
                             "'client_assertion' or 'client_secret'.", status=401)
        return False

    def check_assertion(self, assertion: str, token_endpoints: tuple[str, ...]) -> None:
        """A certificate credential: header x5t/x5t#S256 names the registered certificate, RS256/PS256 signature,
        aud = this tenant's token endpoint, iss = sub = client id, now within [nbf, exp]."""
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            raise EntraError("invalid_client", 50027, "JWT token is invalid or malformed.", status=401) from None
        presented = str(header.get("x5t#S256") or header.get("x5t") or "").rstrip("=")  # MSAL keeps the padding
        if self.registered is None or presented not in self.registered.thumbprints:
            raise EntraError("invalid_client", 700027, "The certificate with identifier used to sign the client "
                             "assertion is not registered on application. [Reason - The key was not found., "
                             f"Thumbprint of key used by client: '{presented}']", status=401)
        try:
            claims = jwt.decode(assertion, self.registered.cert.public_key(), algorithms=["RS256", "PS256"],
                                options={"verify_aud": False, "verify_exp": False, "verify_nbf": False,
                                         "verify_iat": False})
        except jwt.PyJWTError:
            raise EntraError("invalid_client", 700027, "Client assertion failed signature validation.",
                             status=401) from None
        if claims.get("iss") != self.credentials.client_id or claims.get("sub") != self.credentials.client_id:
            raise EntraError("invalid_client", 700021, "Client assertion application identifier doesn't match "
                             "'client_id' parameter.", status=401)
        audiences = claims.get("aud") if isinstance(claims.get("aud"), list) else [claims.get("aud")]
        if not any(isinstance(a, str) and a.rstrip("/") in token_endpoints for a in audiences):
            raise EntraError("invalid_client", 50013, "Assertion failed signature validation. [Reason - Assertion "
                             "audience claim does not match the required value.]", status=401)
        now = self.now()
        exp, nbf = float(claims.get("exp", 0)), float(claims.get("nbf", claims.get("iat", 0)))
        if not nbf - 300 <= now < exp:  # Entra allows 5 minutes of clock skew on nbf
            raise EntraError("invalid_client", 700024, "Client assertion is not within its valid time range. "
                             f"Current time: {_utc(now)}, assertion valid from {_utc(nbf)}, expiry time of "
                             f"assertion {_utc(exp)}.", status=401)

    def check_user(self, username: str, password: str) -> None:
        if username.lower() != self.credentials.username.lower():
            raise EntraError("invalid_grant", 50034, "The user account {EUII Hidden} does not exist in the "
                             f"{self.credentials.tenant_id} directory. To sign into this application, the account "
                             "must be added to the directory.")
        if not _same(password, self.credentials.password):
            raise EntraError("invalid_grant", 50126, "Error validating credentials due to invalid username or "
                             "password.")


@dataclass(frozen=True)
class RegisteredCertificate:
    cert: x509.Certificate
    thumbprints: tuple[str, ...]  # x5t (SHA-1) and x5t#S256 (SHA-256), base64url


def _load_certificate(path: Path) -> RegisteredCertificate:
    try:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise ValueError(f"--certificate {path}: not a readable PEM certificate ({exc})") from None
    return RegisteredCertificate(cert, (_b64url(cert.fingerprint(hashes.SHA1())),  # nosec: x5t is SHA-1 by spec
                                        _b64url(cert.fingerprint(hashes.SHA256()))))


def _signing_key(state_dir: Path) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key_path, cert_path = state_dir / SIGNING_KEY_FILE, state_dir / SIGNING_CERT_FILE
    if key_path.exists() and cert_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        return key, x509.load_pem_x509_certificate(cert_path.read_bytes())  # type: ignore[return-value]
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crmsync sandbox token signing")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=3650)).sign(key, hashes.SHA256()))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%m/%d/%Y %H:%M:%S")


# ---------------------------------------------------------------- HTTP endpoints

def _entra(request: Request) -> Entra:
    return request.app.state.sandbox.entra


def _origin(request: Request) -> str:
    return f"https://{request.headers.get('host') or request.url.netloc}"


def entra_json(body: Any, status: int = 200) -> Response:
    return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store, no-cache",
                                                           "Pragma": "no-cache"})


def _error(exc: EntraError, grant: str) -> Response:
    log.info("token request (%s) refused: AADSTS%s", grant or "no grant", exc.code)
    return entra_json(exc.body(), status=exc.status)


async def openid_configuration(request: Request) -> Response:
    entra, tenant = _entra(request), request.path_params["tenant"]
    v2 = request.url.path.rstrip("/").endswith("/v2.0/.well-known/openid-configuration")
    try:
        entra.require_tenant(tenant)
    except EntraError as exc:
        return _error(exc, "discovery")
    base, tid = f"{_origin(request)}/{tenant}", entra.credentials.tenant_id
    version = "/v2.0" if v2 else ""
    issuer = f"{_origin(request)}/{tid}/v2.0" if v2 else f"https://sts.windows.net/{tid}/"
    return entra_json({
        "token_endpoint": f"{base}/oauth2{version}/token",
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": f"{base}/discovery{version}/keys",
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": issuer,
        "request_uri_parameter_supported": False,
        "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
        "authorization_endpoint": f"{base}/oauth2{version}/authorize",
        "device_authorization_endpoint": f"{base}/oauth2{version}/devicecode",
        "http_logout_supported": True, "frontchannel_logout_supported": True,
        "end_session_endpoint": f"{base}/oauth2{version}/logout",
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "acr", "nonce", "preferred_username",
                             "name", "tid", "ver", "at_hash", "c_hash", "email"],
        "kerberos_endpoint": f"{base}/kerberos",
        "tenant_region_scope": "EU", "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net", "msgraph_host": "graph.microsoft.com",
        "rbac_url": "https://pas.windows.net",
    })


async def instance_discovery(request: Request) -> Response:
    """MSAL's authority validation: known when the host is a Microsoft login host or one of the sandbox's names.

    MSAL drops the authority's port when it builds `authorization_endpoint`; for a sandbox host the answer
    names the sandbox's own port (the one this request arrived on when it came straight here).
    """
    entra = _entra(request)
    endpoint = request.query_params.get("authorization_endpoint", "")
    parts = urlsplit(endpoint)
    host = (parts.hostname or "").lower()
    if not host or not entra.serves(host):
        return entra_json({"error": "invalid_instance", "error_description": "AADSTS50049: Unknown or invalid "
                           "instance.", "error_codes": [50049]}, status=400)
    tenant = (parts.path.strip("/").split("/") or ["common"])[0] or "common"
    netloc = parts.netloc if parts.port or host in MICROSOFT_HOSTS else f"{host}:{request.scope['server'][1]}"
    groups = [{"preferred_network": "login.microsoftonline.com", "preferred_cache": "login.windows.net",
               "aliases": list(MICROSOFT_HOSTS)}]
    if host not in MICROSOFT_HOSTS:
        groups.append({"preferred_network": host, "preferred_cache": host, "aliases": [host]})
    return entra_json({"tenant_discovery_endpoint": f"https://{netloc}/{tenant}/v2.0/.well-known/openid-configuration",
                       "api-version": request.query_params.get("api-version", "1.1"), "metadata": groups})


async def user_realm(request: Request) -> Response:
    entra, username = _entra(request), request.path_params["username"]
    domain = entra.credentials.username.rpartition("@")[2]
    if username.lower().rpartition("@")[2] != domain.lower():
        return entra_json({"ver": "1.0", "account_type": "Unknown", "cloud_instance_name": "microsoftonline.com"})
    return entra_json({"ver": "1.0", "account_type": "Managed", "domain_name": domain,
                       "cloud_instance_name": "microsoftonline.com",
                       "cloud_audience_urn": "urn:federation:MicrosoftOnline"})


async def keys(request: Request) -> Response:
    entra = _entra(request)
    numbers = entra.key.public_key().public_numbers()
    der = entra.cert.public_bytes(serialization.Encoding.DER)
    return entra_json({"keys": [{
        "kty": "RSA", "use": "sig", "kid": entra.kid, "x5t": entra.kid,
        "n": _b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
        "e": _b64url(numbers.e.to_bytes(3, "big")), "x5c": [base64.b64encode(der).decode()],
        "issuer": f"{_origin(request)}/{entra.credentials.tenant_id}/v2.0"}]})


async def token(request: Request) -> Response:
    entra, tenant = _entra(request), request.path_params["tenant"]
    v2 = "/v2.0/" in request.url.path
    form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace"),
                                         keep_blank_values=True).items()}
    _basic_auth(request.headers.get("authorization", ""), form)
    grant = form.get("grant_type", "")
    try:
        entra.require_tenant(tenant)
        if not grant:
            raise EntraError("invalid_request", 900144, "The request body must contain the following parameter: "
                             "'grant_type'.")
        entra.check_client_id(form.get("client_id"), tenant)
        endpoints = _token_endpoints(request, entra, tenant)
        body = _grant(entra, grant, form, v2, request, tenant, endpoints)
    except EntraError as exc:
        return _error(exc, grant)
    log.info("token issued (%s grant)", grant)
    return entra_json(body)


def _basic_auth(header: str, form: dict[str, str]) -> None:
    """client_secret_basic: credentials in `Authorization: Basic base64(id:secret)`."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return
    try:
        client_id, _, secret = base64.b64decode(value).decode().partition(":")
    except ValueError:
        return
    form.setdefault("client_id", client_id)
    form.setdefault("client_secret", secret)


def _token_endpoints(request: Request, entra: Entra, tenant: str) -> tuple[str, ...]:
    """Audiences a client assertion may name: this tenant's v1 and v2 token endpoints on the hosts we answer."""
    hosts = {request.headers.get("host", ""), "login.microsoftonline.com"}
    tenants = {tenant, entra.credentials.tenant_id}
    return tuple(f"https://{h}/{t}/oauth2{v}/token" for h in hosts for t in tenants for v in ("/v2.0", ""))


def _grant(entra: Entra, grant: str, form: dict[str, str], v2: bool, request: Request, tenant: str,
           endpoints: tuple[str, ...]) -> dict[str, Any]:
    if grant == "client_credentials":
        resource, _ = _resource(entra, form, v2, app_only=True)
        entra.authenticate_client(form, endpoints, required=True)
        return _token_body(entra, request, resource, v2, app_only=True, scope_text=f"{resource}/.default")
    if grant == "password":
        resource, wanted = _resource(entra, form, v2, app_only=False)
        entra.authenticate_client(form, endpoints, required=False)
        entra.check_user(form.get("username", ""), form.get("password", ""))
        return _token_body(entra, request, resource, v2, app_only=False, scope_text=f"{resource}/user_impersonation",
                           user=True, tenant=tenant, refresh=True)
    if grant == "refresh_token":
        entra.authenticate_client(form, endpoints, required=False)
        issued_for = entra.redeem_refresh(form.get("refresh_token", ""))
        resource = issued_for
        if form.get("scope") or form.get("resource"):
            resource, _ = _resource(entra, form, v2, app_only=False)
        return _token_body(entra, request, resource, v2, app_only=False, scope_text=f"{resource}/user_impersonation",
                           user=True, tenant=tenant, refresh=True)
    raise EntraError("unsupported_grant_type", 70003, f"The app requested an unsupported grant type '{grant}'.")


def _resource(entra: Entra, form: dict[str, str], v2: bool, *, app_only: bool) -> tuple[str, set[str]]:
    """The one resource a request asks for (`scope` on v2, `resource` on v1) and the OIDC scopes beside it."""
    if not v2:
        resource = form.get("resource", "").rstrip("/")
        if not resource:
            raise EntraError("invalid_request", 900144, "The request body must contain the following parameter: "
                             "'resource'.")
        scopes: set[str] = set()
    else:
        scopes = set(form.get("scope", "").split())
        resources = {s.rsplit("/", 1)[0] for s in scopes - OIDC_SCOPES}
        if not scopes:
            raise EntraError("invalid_request", 900144, "The request body must contain the following parameter: "
                             "'scope'.")
        if len(resources) != 1:
            raise EntraError("invalid_scope", 70011, "The provided request must include a 'scope' input parameter "
                             "naming exactly one resource, e.g. https://<org>.crm.dynamics.com/.default.")
        resource = resources.pop().rstrip("/")
        resource_scopes = scopes - OIDC_SCOPES
        if app_only and not all(s.endswith("/.default") for s in resource_scopes):
            raise EntraError("invalid_scope", 1002012, f"The provided value for scope {' '.join(sorted(scopes))} is "
                             "not valid. Client credential flows must have a scope value with /.default suffixed "
                             "to the resource identifier (application ID URI).")
    if not entra.resource_known(resource):
        raise EntraError("invalid_resource", 500011, f"The resource principal named {resource} was not found in "
                         f"the tenant named {entra.credentials.tenant_id}. This can happen if the application has "
                         "not been installed by the administrator of the tenant or consented to by any user in the "
                         "tenant. You might have sent your authentication request to the wrong tenant.")
    return resource, scopes & OIDC_SCOPES


def _token_body(entra: Entra, request: Request, resource: str, v2: bool, *, app_only: bool, scope_text: str,
                user: bool = False, tenant: str = "", refresh: bool = False) -> dict[str, Any]:
    host = request.headers.get("host", "login.microsoftonline.com")
    lifetime = entra.settings.access_token_lifetime_seconds
    access = entra.access_token(resource, app_only=app_only, issuer_host=host)
    if v2:
        body: dict[str, Any] = {"token_type": "Bearer", "scope": scope_text, "expires_in": lifetime,
                                "ext_expires_in": lifetime, "access_token": access}
    else:
        now = int(entra.now())
        body = {"token_type": "Bearer", "scope": "user_impersonation", "expires_in": str(lifetime),
                "ext_expires_in": str(lifetime), "expires_on": str(now + lifetime), "not_before": str(now),
                "resource": resource, "access_token": access}
    if user:
        body["refresh_token"] = entra.issue_refresh(resource)
        body["id_token"] = entra.id_token(f"https://{host}/{entra.credentials.tenant_id}/v2.0")
        body["client_info"] = entra.client_info()
    return body


def challenge(entra: Entra, origin: str) -> str:
    """The `WWW-Authenticate` value Dataverse sends with a 401: where to get a token, and for what."""
    return (f"Bearer authorization_uri={origin}/{entra.credentials.tenant_id}/oauth2/authorize, "
            f"resource_id={entra.settings.org_url}/")
