"""`POST /api/data/v9.x/$batch`: several operations in one multipart/mixed request.

Follows learn.microsoft.com/power-apps/developer/data-platform/webapi/execute-batch-operations-using-web-api:
  * parts are `application/http` requests (`METHOD <url> HTTP/1.1`, headers, body); inner URLs may be absolute
    (https://host/api/data/v9.2/contacts), root-relative (/api/data/v9.2/contacts) or relative to the service
    root (contacts)
  * a change set (a nested multipart/mixed part) is atomic and may not contain GET; `Content-ID: n` lets later
    parts of the same change set use `$n` as (the start of) their URL or as an `@odata.bind` value
  * at most 1,000 requests per batch; change sets don't nest
  * without `Prefer: odata.continue-on-error` processing stops at the first failure; with it every part runs
  * the response is 200 multipart/mixed (boundary `batchresponse_<guid>`), parts in request order, change-set
    answers nested under `changesetresponse_<guid>`; a failed change set answers with its one error

Line endings: CRLF as the spec says, but bare LF is accepted too (some clients build bodies with '\\n').
A `$batch` counts as one request for service protection; its parts are counted in the statistics.
"""
from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from starlette.responses import Response

from .context import Call, Prefer, respond
from .errors import BATCH_TOO_LARGE, INVALID_ARGUMENT, DataverseError, bad_request

_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)


@dataclass
class Part:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    content_id: str | None = None


@dataclass
class ChangeSet:
    parts: list[Part] = field(default_factory=list)


class _Rollback(Exception):
    """Raised inside a change set's transaction to undo it after a failed part."""


def batch(call: Call) -> Response:
    boundary = _boundary(call.headers.get("content-type", ""))
    items = _parse(call.body, boundary, nested=False)
    total = sum(len(i.parts) if isinstance(i, ChangeSet) else 1 for i in items)
    if total > call.sandbox.settings.max_batch_requests:
        raise DataverseError(400, BATCH_TOO_LARGE, f"The number of requests in the batch ({total}) exceeds the "
                             f"maximum of {call.sandbox.settings.max_batch_requests}.")
    out_boundary = f"batchresponse_{uuid.uuid4()}"
    chunks: list[bytes] = []
    for item in items:
        if isinstance(item, ChangeSet):
            chunk, failed = _run_change_set(call, item)
        else:
            response = _run(call, item, {})
            chunk, failed = _http_part(response, None), response.status_code >= 400
        chunks.append(chunk)
        if failed and not call.prefer.continue_on_error:
            break
    if call.prefer.continue_on_error:
        call.applied.append("odata.continue-on-error")
    body = b"".join(f"--{out_boundary}\r\n".encode() + c for c in chunks) + f"--{out_boundary}--\r\n".encode()
    headers = [("Preference-Applied", ",".join(call.applied))] if call.applied else []
    return respond(200, body, headers, media_type=f"multipart/mixed; boundary={out_boundary}")


def _boundary(content_type: str) -> str:
    match = _BOUNDARY.search(content_type)
    if not content_type.lower().startswith("multipart/mixed") or match is None:
        raise bad_request("The $batch request must have Content-Type: multipart/mixed; boundary=batch_<id>.",
                          INVALID_ARGUMENT)
    return match.group(1)


def _parse(body: bytes, boundary: str, *, nested: bool) -> list[Part | ChangeSet]:
    text = body.decode("utf-8")
    delimiter = f"--{boundary}"
    if delimiter not in text:
        raise bad_request(f"The $batch body has no part delimited by '{delimiter}'.", INVALID_ARGUMENT)
    chunks = text.split(delimiter)[1:]
    items: list[Part | ChangeSet] = []
    for chunk in chunks:
        if chunk.startswith("--"):
            break
        headers, payload = _split_headers(chunk.lstrip("\r\n"))
        content_type = headers.get("content-type", "")
        if content_type.lower().startswith("multipart/mixed"):
            if nested:
                raise bad_request("Change sets can't be nested.", INVALID_ARGUMENT)
            inner = _parse(payload.encode(), _boundary(content_type), nested=True)
            change_set = ChangeSet([p for p in inner if isinstance(p, Part)])
            for part in change_set.parts:
                if part.method == "GET":
                    raise bad_request("A change set can't contain GET requests.", INVALID_ARGUMENT)
            items.append(change_set)
        else:
            items.append(_request(payload, headers.get("content-id")))
    return items


def _split_headers(text: str) -> tuple[dict[str, str], str]:
    """Headers (lower-case names) and the rest, for a block whose header lines end at the first blank line."""
    normalized = text.replace("\r\n", "\n")
    head, _, rest = normalized.partition("\n\n")
    headers = {}
    for line in head.split("\n"):
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    return headers, rest


def _request(payload: str, content_id: str | None) -> Part:
    normalized = payload.replace("\r\n", "\n").lstrip("\n")
    request_line, _, rest = normalized.partition("\n")
    method, _, target = request_line.strip().partition(" ")
    if target.endswith((" HTTP/1.1", " HTTP/1.0")):
        target = target[:-9]
    if not method or not target.strip():
        raise bad_request(f"The $batch part doesn't start with a request line: '{request_line[:80]}'.",
                          INVALID_ARGUMENT)
    headers, body = _split_headers(rest)
    url = target.strip().replace(" ", "%20")  # a client that forgot to encode spaces still gets its answer
    return Part(method.upper(), url, headers, body.rstrip("\n").encode(), content_id)


def _run_change_set(call: Call, change_set: ChangeSet) -> tuple[bytes, bool]:
    boundary = f"changesetresponse_{uuid.uuid4()}"
    responses: list[tuple[Part, Response]] = []
    failure: Response | None = None
    try:
        with call.sandbox.store.atomic():
            references: dict[str, str] = {}
            for part in change_set.parts:
                response = _run(call, part, references)
                if response.status_code >= 400:
                    failure = response
                    raise _Rollback()
                responses.append((part, response))
                entity_id = _header(response, "odata-entityid")
                if part.content_id and entity_id:
                    references[part.content_id] = entity_id
    except _Rollback:
        assert failure is not None
        return _http_part(failure, None), True
    inner = b"".join(f"--{boundary}\r\n".encode() + _http_part(r, p.content_id) for p, r in responses)
    chunk = f"Content-Type: multipart/mixed; boundary={boundary}\r\n\r\n".encode() + inner + \
        f"--{boundary}--\r\n".encode()
    return chunk, False


def _run(call: Call, part: Part, references: dict[str, str]) -> Response:
    """Execute one inner request through the sandbox's router, with `$n` references resolved."""
    url = part.url
    if url.startswith("$"):
        number, _, tail = url[1:].partition("/")
        if number not in references:
            return respond(400, DataverseError(400, INVALID_ARGUMENT, f"Content-ID reference '${number}' is "
                                               "unknown in this change set.").body())
        url = references[number] + (f"/{tail}" if tail else "")
    path, query = _inner_path(call, url)
    if path is None:
        return respond(400, DataverseError(400, INVALID_ARGUMENT, f"The $batch part URL '{part.url}' isn't under "
                                           f"{call.service_root}.").body())
    body = _resolve_binds(part.body, references)
    headers = {**{k: v for k, v in call.headers.items() if k in ("authorization",)}, **part.headers}
    inner = Call(sandbox=call.sandbox, method=part.method, path=path, query=query, headers=headers, body=body,
                 version=call.version, origin=call.origin, user_id=call.user_id,
                 prefer=Prefer.parse(part.headers.get("prefer", "")))
    return call.sandbox.dispatch(inner)


def _inner_path(call: Call, url: str) -> tuple[str | None, dict[str, str]]:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    path = parts.path
    match = re.match(r"^/api/data/v9\.[012](/.*)?$", path)
    if match:
        return (match.group(1) or "/").rstrip("/") or "/", query
    if parts.scheme or path.startswith("/"):
        return None, query
    return "/" + path.rstrip("/"), query


def _resolve_binds(body: bytes, references: dict[str, str]) -> bytes:
    if not references or b"$" not in body:
        return body
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if isinstance(data, dict):
        for key, value in data.items():
            if key.endswith("@odata.bind") and isinstance(value, str) and value.startswith("$") \
                    and value[1:] in references:
                data[key] = references[value[1:]]
    return json.dumps(data).encode()


def _header(response: Response, name: str) -> str | None:
    for key, value in response.raw_headers:
        if key.decode("latin-1").lower() == name:
            return value.decode("latin-1")
    return None


def _http_part(response: Response, content_id: str | None) -> bytes:
    lines = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if content_id:
        lines.append(f"Content-ID: {content_id}")
    status = HTTPStatus(response.status_code)
    lines += ["", f"HTTP/1.1 {status.value} {status.phrase}"]
    for key, value in response.raw_headers:
        if key.decode("latin-1").lower() != "content-length":
            lines.append(f"{key.decode('latin-1')}: {value.decode('latin-1')}")
    body: Any = response.body or b""
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body + b"\r\n"
