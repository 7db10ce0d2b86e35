"""Microsoft Entra ID tokens for the Dataverse Web API: the account settings and a caching token provider.

Three ways to sign in, as a Campaign "Microsoft Dynamics CRM" external account offers them (Web API, OAuth type
Password Credentials or Certificate) plus the client secret most app registrations use:

  * client secret       client_credentials grant with `client_secret`
  * certificate         client_credentials grant with a `client_assertion`: an RS256 JWT signed with the
                        certificate's private key, header `x5t` = the certificate's SHA-1 thumbprint (computed
                        here from the PEM), claims aud = token endpoint, iss = sub = client id, jti, nbf, exp
                        (learn.microsoft.com/entra/identity-platform/certificate-credentials)
  * password            the resource-owner password grant for a public client (v2-oauth-ropc); the refresh
                        token it returns renews the access token, falling back to the password if refused

The scope is always `<environment URL>/.default`. Tokens are cached until `refresh_margin` seconds before they
expire. `invalidate()` drops the cached token (the client calls it once on a 401).

Invariants: https only, TLS verification on with the CA file passed explicitly (None means the system trust
store); secrets are pydantic SecretStr and never appear in a repr, a log line or an exception message.
"""
from __future__ import annotations

import base64
import logging
import ssl
import time
import uuid
from pathlib import Path
from typing import Any, Literal

import httpx
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from pydantic import BaseModel, ConfigDict, SecretStr, field_validator, model_validator

log = logging.getLogger("crmsync.dynamics.auth")
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class DynamicsAccount(BaseModel):
    """Where the environment is and how to sign in to it (configuration is data)."""
    model_config = ConfigDict(frozen=True)

    environment_url: str  # https://<org>.crm.dynamics.com
    tenant_id: str
    client_id: str
    authority: str = "https://login.microsoftonline.com"
    client_secret: SecretStr | None = None
    certificate_path: Path | None = None  # PEM with the certificate (and the key, unless key_path is given)
    key_path: Path | None = None
    username: str | None = None
    password: SecretStr | None = None
    ca_file: Path | None = None  # trust this CA (e.g. the sandbox's) instead of the system store
    api_version: str = "9.2"
    timeout_seconds: float = 60.0

    @field_validator("environment_url", "authority")
    @classmethod
    def _https(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError(f"{value!r} must be an https:// URL: Dataverse and Entra ID only serve HTTPS")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _one_method(self) -> "DynamicsAccount":
        methods = [m for m, given in (("client_secret", self.client_secret is not None),
                                      ("certificate_path", self.certificate_path is not None),
                                      ("username/password", self.username is not None or self.password is not None))
                   if given]
        if len(methods) != 1:
            raise ValueError("give exactly one way to sign in: client_secret, certificate_path, or username and "
                             f"password (got: {', '.join(methods) or 'none'})")
        if methods == ["username/password"] and not (self.username and self.password):
            raise ValueError("the password grant needs both username and password")
        return self

    @property
    def method(self) -> Literal["client_secret", "certificate", "password"]:
        if self.client_secret is not None:
            return "client_secret"
        return "certificate" if self.certificate_path is not None else "password"

    @property
    def token_endpoint(self) -> str:
        return f"{self.authority}/{self.tenant_id}/oauth2/v2.0/token"

    @property
    def scope(self) -> str:
        return f"{self.environment_url}/.default"

    def verify(self) -> ssl.SSLContext | bool:
        """The `verify` argument for httpx: a context trusting the CA file as given, else the default store."""
        return ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else True


class DynamicsAuthError(Exception):
    """Entra ID refused to issue a token; `code` is the AADSTS number when Entra gave one."""

    def __init__(self, error: str, description: str, code: int | None = None) -> None:
        super().__init__(f"{error}: {description}")
        self.error, self.description, self.code = error, description, code


class Certificate:
    """A PEM certificate and its private key; the thumbprint (x5t) is computed, never configured."""

    def __init__(self, certificate_path: Path, key_path: Path | None = None) -> None:
        try:
            pem = Path(certificate_path).read_bytes()
            self.cert = x509.load_pem_x509_certificate(pem)
            key_pem = Path(key_path).read_bytes() if key_path else pem
            self.key = serialization.load_pem_private_key(key_pem, password=None)
        except (OSError, ValueError) as exc:
            raise DynamicsAuthError("invalid_certificate", f"cannot read the certificate or its private key from "
                                    f"{certificate_path}{f' / {key_path}' if key_path else ''}: "
                                    f"{type(exc).__name__}") from None

    @property
    def x5t(self) -> str:
        digest = self.cert.fingerprint(hashes.SHA1())  # nosec: x5t is SHA-1 by specification
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def assertion(self, client_id: str, audience: str, lifetime: int = 600) -> str:
        now = int(time.time())
        claims = {"aud": audience, "iss": client_id, "sub": client_id, "jti": str(uuid.uuid4()),
                  "nbf": now, "iat": now, "exp": now + lifetime}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"x5t": self.x5t})  # type: ignore[arg-type]


class TokenProvider:
    """Access tokens for one account, cached until shortly before they expire."""

    def __init__(self, account: DynamicsAccount, http: httpx.Client | None = None, refresh_margin: float = 120) \
            -> None:
        self.account = account
        self.http = http or httpx.Client(verify=account.verify(), timeout=account.timeout_seconds)
        self.refresh_margin = refresh_margin
        self.certificate = Certificate(account.certificate_path, account.key_path) \
            if account.certificate_path else None
        self._token: str | None = None
        self._expires_at = 0.0
        self._refresh_token: str | None = None
        self.issued = 0  # tokens obtained from Entra (not from the cache)

    def token(self) -> str:
        if self._token is None or time.time() >= self._expires_at - self.refresh_margin:
            self._acquire()
        assert self._token is not None
        return self._token

    def invalidate(self) -> None:
        self._token, self._expires_at = None, 0.0

    def _acquire(self) -> None:
        a = self.account
        if a.method == "password" and self._refresh_token:
            try:
                self._store(self._post({"grant_type": "refresh_token", "client_id": a.client_id,
                                        "refresh_token": self._refresh_token, "scope": f"{a.scope} offline_access"}))
                return
            except DynamicsAuthError as exc:
                log.info("refresh token refused (%s); signing in again", exc.error)
                self._refresh_token = None
        self._store(self._post(self._grant_form()))

    def _grant_form(self) -> dict[str, str]:
        a = self.account
        if a.method == "client_secret":
            assert a.client_secret is not None
            return {"grant_type": "client_credentials", "client_id": a.client_id, "scope": a.scope,
                    "client_secret": a.client_secret.get_secret_value()}
        if a.method == "certificate":
            assert self.certificate is not None
            return {"grant_type": "client_credentials", "client_id": a.client_id, "scope": a.scope,
                    "client_assertion_type": ASSERTION_TYPE,
                    "client_assertion": self.certificate.assertion(a.client_id, a.token_endpoint)}
        assert a.username and a.password is not None
        return {"grant_type": "password", "client_id": a.client_id, "scope": f"{a.scope} offline_access",
                "username": a.username, "password": a.password.get_secret_value()}

    def _post(self, form: dict[str, str]) -> dict[str, Any]:
        try:
            response = self.http.post(self.account.token_endpoint, data=form,
                                      headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise DynamicsAuthError("unreachable", f"token endpoint {self.account.token_endpoint} did not answer: "
                                    f"{type(exc).__name__}") from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200 or "access_token" not in body:
            codes = body.get("error_codes") or [None]
            description = str(body.get("error_description") or f"HTTP {response.status_code}").split(" Trace ID:")[0]
            raise DynamicsAuthError(str(body.get("error") or "token_error"), description, codes[0])
        return body

    def _store(self, body: dict[str, Any]) -> None:
        self._token = str(body["access_token"])
        self._expires_at = time.time() + float(body.get("expires_in", 3599))
        self._refresh_token = body.get("refresh_token") or self._refresh_token
        self.issued += 1
        log.info("access token obtained (%s), valid %s s", self.account.method, body.get("expires_in"))

    def secrets(self) -> list[str]:
        """Values that must never show up in a message: the token(s) and configured secrets."""
        a = self.account
        values = [self._token, self._refresh_token, a.client_secret.get_secret_value() if a.client_secret else None,
                  a.password.get_secret_value() if a.password else None]
        return [v for v in values if v]
