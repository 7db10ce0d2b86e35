"""Send one client's requests for a vendor host name to the sandbox, without touching the machine.

MSAL and the Azure SDK talk to `login.microsoftonline.com` (instance discovery, user realm) and drop the port of
a custom authority in some URLs. Instead of editing /etc/hosts, a test hands such a client a `requests.Session`
whose transport adapter connects to the sandbox's 127.0.0.1:PORT whenever the URL names a pinned host. TLS still
verifies: SNI and the certificate check use the pinned name, which the sandbox certificate carries
(`--tls-name login.microsoftonline.com`), signed by the sandbox CA passed as `verify`. Nothing outside the
session changes: other sessions and processes resolve names as usual.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter


class PinnedHostsAdapter(HTTPAdapter):
    """Connect to `pins[host]` = (ip, port) for the listed https hosts; everything else is untouched."""

    def __init__(self, pins: Mapping[str, tuple[str, int]], **kwargs: Any) -> None:
        self.pins = dict(pins)
        super().__init__(**kwargs)

    def build_connection_pool_key_attributes(self, request: requests.PreparedRequest, verify: Any,
                                             cert: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        target = self.pins.get(host_params["host"])
        if target is not None and host_params["scheme"] == "https":
            pool_kwargs = {**pool_kwargs, "server_hostname": host_params["host"],
                           "assert_hostname": host_params["host"]}
            host_params = {**host_params, "host": target[0], "port": target[1]}
        return host_params, pool_kwargs

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        host = urlsplit(request.url or "").hostname
        if host in self.pins:
            request.headers["Host"] = host  # the name the client meant, not the address it reaches
        return super().send(request, *args, **kwargs)


def pinned_session(ca_path: Path, pins: Mapping[str, tuple[str, int]]) -> requests.Session:
    """A session that trusts only the sandbox CA (environment variables ignored) and honours `pins`."""
    session = requests.Session()
    session.trust_env = False  # else an exported REQUESTS_CA_BUNDLE silently replaces `verify`
    session.verify = str(ca_path)
    session.mount("https://", PinnedHostsAdapter(pins))
    return session
