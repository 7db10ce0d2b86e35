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
import binascii
import logging
import re
import ssl
import time
import uuid
from pathlib import Path
from typing import Any, Literal

import httpx
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from crmsync.connectors import AccountBase, https_url

log = logging.getLogger("crmsync.dynamics.auth")
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


AuthMethod = Literal["client_secret", "certificate", "password"]
_METHOD_FIELDS: dict[str, tuple[str, ...]] = {
    "client_secret": ("client_secret",),
    "certificate": ("certificate_path", "key_path", "certificate", "private_key", "thumbprint"),
    "password": ("username", "password"),
}


class ServiceProtection(BaseModel):
    """The service-protection limits the client paces itself under (per user, sliding window). Defaults are the
    documented ones (learn.microsoft.com/power-apps/developer/data-platform/api-limits); `headroom` is the share
    of them the client uses in steady state, leaving the rest to other clients of the same user."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    requests_per_window: int = Field(6000, ge=1)
    execution_seconds_per_window: float = Field(1200.0, gt=0)
    window_seconds: float = Field(300.0, gt=0)
    headroom: float = Field(0.9, gt=0, le=1)


class DynamicsAccount(AccountBase):
    """A Dataverse environment and how to sign in to it: the `type: dynamics` account of crmsync.yaml and of the
    account store (where SecretStr fields are encrypted at rest). Configuration is data: nothing here connects.

    `auth` picks the sign-in method; when it is left out, the one whose settings are given is used. A certificate
    is a PEM file (`certificate_path`, with the key in it or in `key_path`) or PEM text (`certificate`, public, and
    `private_key`, secret: PEM or base64 of the PEM as Campaign's "Private Key (Base64 encoded)" field takes it);
    `thumbprint` (optional) is checked against the certificate: the SHA-1 thumbprint in hex as Entra shows it, or
    base64 as the app manifest's customKeyIdentifier holds it. Validation errors never repeat the input (it may
    hold secrets)."""
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    type: Literal["dynamics"] = "dynamics"
    url: str  # the environment URL, https://<org>.crm.dynamics.com
    tenant_id: str = Field(min_length=1)
    client_id: str = Field(min_length=1)
    auth: AuthMethod | None = None
    client_secret: SecretStr | None = None
    certificate_path: Path | None = None
    key_path: Path | None = None
    certificate: str | None = None
    private_key: SecretStr | None = None
    thumbprint: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    authority: str = "https://login.microsoftonline.com"  # sovereign clouds (login.microsoftonline.us...), sandbox
    api_version: str = "9.2"
    timeout_seconds: float = Field(60.0, gt=0)
    service_protection: ServiceProtection = Field(default_factory=ServiceProtection)

    @field_validator("url", "authority")
    @classmethod
    def _https(cls, value: str) -> str:
        return https_url(value)  # Dataverse and Entra ID only serve HTTPS

    @field_validator("api_version")
    @classmethod
    def _version(cls, value: str) -> str:
        cleaned = value.strip().lstrip("vV")
        if not re.fullmatch(r"\d+\.\d+", cleaned):
            raise ValueError(f"expected a Web API version such as '9.2' (got {value!r})")
        return cleaned

    @model_validator(mode="after")
    def _one_method(self) -> "DynamicsAccount":
        given = [m for m, names in _METHOD_FIELDS.items() if any(getattr(self, n) is not None for n in names)]
        method = self.auth or (given[0] if len(given) == 1 else None)
        if method is None:
            raise ValueError("give exactly one way to sign in: client_secret, a certificate (certificate_path, or "
                             "certificate + private_key), or username and password "
                             f"(got: {', '.join(given) or 'none'})")
        others = [m for m in given if m != method]
        if others:
            raise ValueError(f"auth is {method}, but settings of {', '.join(others)} are given too: remove them")
        if method == "client_secret" and self.client_secret is None:
            raise ValueError("auth client_secret needs client_secret")
        if method == "password" and not (self.username and self.password):
            raise ValueError("auth password needs both username and password")
        if method == "certificate":
            inline = self.certificate is not None or self.private_key is not None
            if self.certificate_path is not None and inline:
                raise ValueError("give the certificate either as certificate_path (PEM file) or as certificate + "
                                 "private_key (PEM text), not both")
            if self.certificate_path is None and not (self.certificate and self.private_key):
                raise ValueError("auth certificate needs certificate_path, or certificate and private_key")
        object.__setattr__(self, "auth", method)
        return self

    @property
    def method(self) -> AuthMethod:
        assert self.auth is not None  # set by the validator
        return self.auth

    @property
    def token_endpoint(self) -> str:
        return f"{self.authority}/{self.tenant_id}/oauth2/v2.0/token"

    @property
    def scope(self) -> str:
        return f"{self.url}/.default"

    def verify(self) -> ssl.SSLContext | bool:
        """The `verify` argument for httpx: a context trusting the CA file as given, else the default store."""
        return ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else True


class DynamicsAuthError(Exception):
    """Entra ID refused to issue a token; `code` is the AADSTS number when Entra gave one."""

    def __init__(self, error: str, description: str, code: int | None = None) -> None:
        super().__init__(f"{error}: {description}")
        self.error, self.description, self.code = error, description, code


class Certificate:
    """A certificate and its private key (PEM); the thumbprint (x5t) is computed from the certificate, and a
    configured thumbprint must name the same certificate."""

    def __init__(self, cert_pem: bytes, key_pem: bytes, *, source: str, thumbprint: str | None = None) -> None:
        try:
            self.cert = x509.load_pem_x509_certificate(cert_pem)
            self.key = serialization.load_pem_private_key(key_pem, password=None)
        except ValueError as exc:
            raise DynamicsAuthError("invalid_certificate", f"cannot read the certificate or its private key from "
                                    f"{source}: {type(exc).__name__} (expected PEM)") from None
        if thumbprint is not None and _thumbprint_bytes(thumbprint) != self.sha1:
            raise DynamicsAuthError("invalid_certificate", f"the configured thumbprint {thumbprint!r} does not "
                                    f"match the certificate from {source} (its SHA-1 thumbprint is "
                                    f"{self.sha1.hex().upper()}): check that both belong to the same app key")

    @classmethod
    def of(cls, account: "DynamicsAccount") -> "Certificate":
        """The account's certificate, from its PEM file(s) or its inline PEM text."""
        if account.certificate_path is not None:
            source = str(account.certificate_path) + (f" / {account.key_path}" if account.key_path else "")
            try:
                cert_pem = Path(account.certificate_path).read_bytes()
                key_pem = Path(account.key_path).read_bytes() if account.key_path else cert_pem
            except OSError as exc:
                raise DynamicsAuthError("invalid_certificate", f"cannot read {source}: {exc.strerror}") from None
            return cls(cert_pem, key_pem, source=source, thumbprint=account.thumbprint)
        assert account.certificate and account.private_key is not None  # the account model checked this
        return cls(account.certificate.encode(), _pem(account.private_key.get_secret_value()),
                   source="the account's certificate and private_key", thumbprint=account.thumbprint)

    @property
    def sha1(self) -> bytes:
        return self.cert.fingerprint(hashes.SHA1())  # nosec: x5t is SHA-1 by specification

    @property
    def x5t(self) -> str:
        return base64.urlsafe_b64encode(self.sha1).rstrip(b"=").decode()

    def assertion(self, client_id: str, audience: str, lifetime: int = 600) -> str:
        now = int(time.time())
        claims = {"aud": audience, "iss": client_id, "sub": client_id, "jti": str(uuid.uuid4()),
                  "nbf": now, "iat": now, "exp": now + lifetime}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"x5t": self.x5t})  # type: ignore[arg-type]


def _pem(text: str) -> bytes:
    """A private key given as PEM, or as base64 of the PEM (what `base64 -w0 private.key` prints)."""
    stripped = text.strip()
    if stripped.startswith("-----BEGIN"):
        return stripped.encode()
    try:
        return base64.b64decode(stripped, validate=True)
    except binascii.Error:
        return stripped.encode()  # not base64 either: PEM parsing says what is wrong


def _thumbprint_bytes(text: str) -> bytes | None:
    """A SHA-1 thumbprint from hex (with or without ':' or spaces) or base64/base64url; None if it is neither."""
    compact = re.sub(r"[\s:]", "", text)
    if re.fullmatch(r"[0-9a-fA-F]{40}", compact):
        return bytes.fromhex(compact)
    try:
        decoded = base64.urlsafe_b64decode(compact.replace("+", "-").replace("/", "_") + "=" * (-len(compact) % 4))
    except (binascii.Error, ValueError):
        return None
    return decoded if len(decoded) == 20 else None


class TokenProvider:
    """Access tokens for one account, cached until shortly before they expire."""

    def __init__(self, account: DynamicsAccount, http: httpx.Client | None = None, refresh_margin: float = 120) \
            -> None:
        self.account = account
        self.http = http or httpx.Client(verify=account.verify(), timeout=account.timeout_seconds)
        self.refresh_margin = refresh_margin
        self.certificate = Certificate.of(account) if account.method == "certificate" else None
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
        values = [self._token, self._refresh_token] + [
            secret.get_secret_value() for secret in (a.client_secret, a.password, a.private_key) if secret]
        return [v for v in values if v]
