"""Logging in to Salesforce: the connector does it itself, against the account's configured `login_url`.

Why not simple-salesforce's own login: it builds every login URL as ``https://{domain}.salesforce.com``, which
cannot express a My Domain with a port or the local sandbox. We reuse its two login helpers (`token_login` for
the OAuth 2.0 username-password grant, the SOAP partner `login` through `SalesforceLogin(scratch_url=...)`),
point them at the configured URL, and then build a `Salesforce` object from the session id and instance URL.

Rules this module enforces, whatever the configuration says:
- HTTPS only: an ``http://`` login URL is refused before any byte is sent (even if config validation was
  bypassed), because the password and security token would travel in clear text.
- TLS verification is always on; ``ca_file`` only adds the local sandbox CA (``requests`` ``verify=<file>``).
- Secrets never appear in an error message: the password, security token and client secret are scrubbed from
  whatever text Salesforce (or a library) returned.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from urllib.parse import urlparse

import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceAuthenticationFailed
from simple_salesforce.login import SalesforceLogin, token_login
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential, wait_random

from connectors.salesforce.account import SalesforceAccount

log = logging.getLogger("crmsync.salesforce.auth")

PRODUCTION_LOGIN_URL = "https://login.salesforce.com"
SANDBOX_LOGIN_URL = "https://test.salesforce.com"
DEFAULT_TIMEOUT = (10.0, 120.0)  # (connect, read) seconds for every HTTP call the connector makes
LOGIN_ATTEMPTS = 4


class SalesforceLoginError(Exception):
    """Login was refused or impossible. The message names the login URL and user, never a secret."""


@dataclass(frozen=True)
class Session:
    """What a successful login yields: where to send API calls and the token to send with them."""

    instance_url: str
    session_id: str = field(repr=False)
    api_version: str


class HttpSession(requests.Session):
    """A `requests.Session` with a default timeout, so no call (simple-salesforce's, Bulk 2.0's) can hang.

    It also passes its own `verify` on every request: `requests` otherwise lets an exported
    REQUESTS_CA_BUNDLE silently replace a session's CA file (proxies from the environment still apply)."""

    def __init__(self, timeout: tuple[float, float] = DEFAULT_TIMEOUT) -> None:
        super().__init__()
        self.timeout = timeout

    def request(self, method, url, *args, **kwargs):  # type: ignore[override]
        kwargs.setdefault("timeout", self.timeout)
        if self.verify is not True:
            kwargs.setdefault("verify", self.verify)
        return super().request(method, url, *args, **kwargs)


def http_session(account: SalesforceAccount, timeout: tuple[float, float] | None = None) -> HttpSession:
    """The HTTP session every call of this account goes through: verification on, plus the sandbox CA if set;
    answers are awaited `account.request_timeout` seconds unless `timeout` says otherwise."""
    session = HttpSession(timeout or (DEFAULT_TIMEOUT[0], account.request_timeout))
    session.verify = str(account.ca_file) if account.ca_file else True
    return session


def effective_login_url(account: SalesforceAccount) -> str:
    """The URL to log in at: `sandbox: true` with the default (production) URL means test.salesforce.com."""
    url = (account.login_url or PRODUCTION_LOGIN_URL).rstrip("/")
    if account.sandbox and url == PRODUCTION_LOGIN_URL:
        url = SANDBOX_LOGIN_URL
    if urlparse(url).scheme != "https":
        raise SalesforceLoginError(
            f"refusing to log in at {url!r}: login_url must be an https:// URL, because the password and "
            "security token would otherwise travel unencrypted")
    return url


def scrub(text: str, account: SalesforceAccount) -> str:
    """Remove every secret of `account` from `text` (longest first, so password+token goes as one)."""
    return account.scrub(text)


def _is_transient(exc: BaseException) -> bool:
    """Network trouble or a 5xx/429 from the login endpoint: worth another try. Bad credentials are not."""
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return True
    if isinstance(exc, SalesforceAuthenticationFailed):
        return isinstance(exc.code, int) and (exc.code >= 500 or exc.code == 429)
    return isinstance(exc, (ValueError, AttributeError))  # a non-JSON / non-XML body, e.g. an HTML 503 page


def _oauth(account: SalesforceAccount, url: str, http: requests.Session) -> tuple[str, str]:
    if not account.client_id or account.client_secret is None:
        raise SalesforceLoginError(
            f"Salesforce login at {url} for {account.username}: auth 'oauth' needs client_id and client_secret "
            "(the connected app's consumer key and secret); set them, or use auth: soap")
    data = {
        "grant_type": "password",
        "client_id": account.client_id,
        "client_secret": account.client_secret.get_secret_value(),
        "username": account.username,
        "password": account.password.get_secret_value() + account.security_token.get_secret_value(),
    }
    return token_login(f"{url}/services/oauth2/token", data, "login", account.client_id, None, None, http)


def _soap(account: SalesforceAccount, url: str, http: requests.Session) -> tuple[str, str]:
    return SalesforceLogin(
        username=account.username, password=account.password.get_secret_value(),
        security_token=account.security_token.get_secret_value(), sf_version=account.api_version,
        session=http, client_id="crmsync", scratch_url=url)


def login(account: SalesforceAccount, http: requests.Session | None = None) -> Session:
    """Log in with the account's method (`auth: oauth` password grant, or `auth: soap` partner login).

    Transient failures (network, 5xx) are retried a few times; refused credentials raise `SalesforceLoginError`
    at once, with Salesforce's own error text (secrets scrubbed).
    """
    url = effective_login_url(account)
    http = http or http_session(account)
    method = _oauth if account.auth == "oauth" else _soap
    retrying = Retrying(stop=stop_after_attempt(LOGIN_ATTEMPTS),
                        wait=wait_exponential(multiplier=0.5, max=8) + wait_random(0, 0.5),
                        retry=retry_if_exception(_is_transient), reraise=True)
    try:
        session_id, instance = retrying(method, account, url, http)
    except SalesforceLoginError:
        raise
    except SalesforceAuthenticationFailed as exc:
        raise SalesforceLoginError(scrub(
            f"Salesforce login at {url} for {account.username} failed ({account.auth}): {exc.code}: "
            f"{exc.auth_message}", account)) from None
    except requests.exceptions.SSLError as exc:
        hint = "" if account.ca_file else " (for the local sandbox, set ca_file to its ca.pem)"
        raise SalesforceLoginError(scrub(
            f"Salesforce login at {url} for {account.username}: TLS verification failed{hint}: {exc}",
            account)) from None
    except (requests.RequestException, ValueError, AttributeError) as exc:
        raise SalesforceLoginError(scrub(
            f"Salesforce login at {url} for {account.username}: no usable answer after {LOGIN_ATTEMPTS} "
            f"attempts: {type(exc).__name__}: {exc}", account)) from None
    instance_url = "https://" + instance.split("://", 1)[-1].rstrip("/")
    log.info("logged in to Salesforce as %s at %s (instance %s)", account.username, url, instance_url)
    return Session(instance_url=instance_url, session_id=session_id, api_version=account.api_version)


def connect(account: SalesforceAccount, session: Session, http: requests.Session) -> Salesforce:
    """A simple-salesforce client bound to an existing session (it will not try to log in by itself)."""
    return Salesforce(instance_url=session.instance_url, session_id=session.session_id,
                      version=session.api_version, session=http)
