"""Structured logging for every crmsync process: one JSON object per line, secrets never included.

Secrets stay out by construction (settings hold them as pydantic SecretStr, which prints as '**********'), and
the redacting filter below is a second net for anything that looks like a credential in free text: both log
formats (JSON and plain text) go through it.

What `redact` recognises (each is tested in tests/security/test_redaction.py):
- `key: value` / `key=value` pairs whose key names a credential, with or without quotes around key or value
  (JSON, Python reprs, form bodies, URL query strings, libpq conninfo, librdkafka `sasl.password=`);
- `Authorization: <scheme> <token>` headers and any `Bearer <token>`;
- XML elements carrying credentials (`<sessionId>` of a SOAP login answer, `<password>` of its request);
- the password of a URL's user-info (`postgresql://user:password@host`);
- Salesforce session ids (`00D…!…`).
"""
from __future__ import annotations

import json
import logging
import re
import sys
from datetime import datetime, timezone

REDACTED = "[redacted]"
_KEY = r"[a-z0-9_.\-]*(?:password|passwd|pwd|secret|token|api[_\-]?key|session[_\-]?id|credentials?)"
_NOT_DONE = r"(?!\[redacted\])"
_VALUE = _NOT_DONE + r"""(?:"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^\s"'&,;<>)}\]]+)"""
_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # Authorization: Bearer abc / OAuth abc / Basic abc (the scheme is kept, the credential goes)
    (re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?(?>(?:(?:bearer|oauth|basic|token)\s+)?))" + _NOT_DONE
                + r"[^\s\"'&,;]+"), r"\g<1>" + REDACTED),
    (re.compile(r"(?i)\b(bearer\s+)" + _NOT_DONE + r"[A-Za-z0-9!._~+/=\-]+"), r"\g<1>" + REDACTED),
    # <sessionId>…</sessionId>, <urn:password>…</urn:password>
    (re.compile(r"(?is)(<(?:[\w.\-]+:)?" + _KEY + r"\b[^>]*>)" + _NOT_DONE + r"(.*?)(</)"),
     r"\g<1>" + REDACTED + r"\g<3>"),
    # "password": "…", 'client_secret': '…', client_secret=…, sasl.password=…
    (re.compile(r"(?i)([\"']?\b" + _KEY + r"[\"']?\s*[:=]\s*)" + _VALUE), r"\g<1>" + REDACTED),
    # scheme://user:password@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s:/@]+:)" + _NOT_DONE + r"[^\s@/]+(@)"),
     r"\g<1>" + REDACTED + r"\g<2>"),
    (re.compile(r"\b00D[A-Za-z0-9]{12,15}![A-Za-z0-9._\-]+"), REDACTED),  # Salesforce session ids
]


def redact(text: str) -> str:
    """`text` with every credential it visibly carries replaced by [redacted] (idempotent)."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key in ("service", "record_id", "object", "mapping"):
            if hasattr(record, key):
                payload[key] = getattr(record, key)
        if record.exc_info:
            payload["error"] = redact(self.formatException(record.exc_info))
        return json.dumps(payload, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`LEVEL logger: message`, redacted like the JSON lines (for commands a person watches)."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup(service: str, level: str = "INFO", json_output: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_output else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    old_factory = logging.getLogRecordFactory()

    def factory(*args, **kwargs):  # every line says which service wrote it
        record = old_factory(*args, **kwargs)
        record.service = service
        return record

    logging.setLogRecordFactory(factory)
