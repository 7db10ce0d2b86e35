"""Response header names spelled the way Salesforce spells them on the wire.

Starlette (and ASGI) lower-case every header name; HTTP says names are case-insensitive, but some clients look
headers up in a plain dict (e.g. `headers["Sforce-NumberOfRecords"]` on a Bulk API 2.0 result). This middleware
rewrites the names of every response's headers to Salesforce's spelling just before they are sent: the exact
spellings in `SPELLINGS` (from the REST API and Bulk API guides' response examples), else Title-Case per dash
(`content-type` -> `Content-Type`). The server is run with uvicorn's h11 implementation (serving.py), which
writes header names exactly as given (httptools would too, but h11 is the one pinned and tested), and with
uvicorn's own `server`/`date` headers off: this middleware adds `Date` itself.

It also enforces the REST API's request-line limit: a URI (path + query string) over 16,384 bytes answers
414 before any handler runs ("Maximum number of rows returned by SOQL queries over the REST API", Salesforce
Help 000386264), which is what stops an over-long SOQL query sent with GET.

Invariant: names change, values and order never do.
"""
from __future__ import annotations

import json
from email.utils import formatdate

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_URI_BYTES = 16_384
SPELLINGS = {
    b"sforce-numberofrecords": b"Sforce-NumberOfRecords",
    b"sforce-locator": b"Sforce-Locator",
    b"sforce-limit-info": b"Sforce-Limit-Info",
    b"www-authenticate": b"WWW-Authenticate",
    b"etag": b"ETag",
    b"x-sfdc-request-id": b"X-SFDC-Request-Id",
    b"x-sfdc-session": b"X-SFDC-Session",
}


def spelled(name: bytes) -> bytes:
    """Salesforce's spelling of a (lower-case) header name."""
    lower = name.lower()
    return SPELLINGS.get(lower) or b"-".join(part[:1].upper() + part[1:] for part in lower.split(b"-"))


class SalesforceHeaders:
    """ASGI middleware: canonical header-name spelling plus a `Date` header on every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if len(scope.get("raw_path", b"")) + len(scope.get("query_string", b"")) > MAX_URI_BYTES:
            await _uri_too_long(send)
            return

        async def respell(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(spelled(name), value) for name, value in message.get("headers", [])]
                if not any(name == b"Date" for name, _ in headers):
                    headers.insert(0, (b"Date", formatdate(usegmt=True).encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, respell)


async def _uri_too_long(send: Send) -> None:
    body = json.dumps([{"message": f"The request URI is longer than {MAX_URI_BYTES} bytes: send long SOQL "
                        "queries through a Bulk API query job or composite/batch", "errorCode": "URI_TOO_LONG"}])
    await send({"type": "http.response.start", "status": 414,
                "headers": [(b"Date", formatdate(usegmt=True).encode()),
                            (b"Content-Type", b"application/json;charset=UTF-8"),
                            (b"Content-Length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body.encode()})
