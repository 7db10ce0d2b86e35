"""The one exception type of the sandbox: a Salesforce API error, rendered the two ways Salesforce renders it.

REST calls answer with a JSON array of `{"message","errorCode","fields"}`; per-record results (sObject
Collections, composite) use `{"statusCode","message","fields"}` instead. Clients key on these exact names
(simple-salesforce reads `[0]['errorCode']` to decide whether to log in again), so both shapes live here.
"""
from __future__ import annotations

from typing import Any, Sequence


class SalesforceError(Exception):
    def __init__(self, code: str, message: str, fields: Sequence[str] = (), status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.fields = list(fields)
        self.status = status

    def rest_body(self) -> list[dict[str, Any]]:
        return [{"message": self.message, "errorCode": self.code, "fields": self.fields}]

    def record_error(self) -> dict[str, Any]:
        return {"statusCode": self.code, "message": self.message, "fields": self.fields}

    def bulk_error(self) -> str:
        """The `sf__Error` column of a Bulk API 2.0 failed-results CSV."""
        return f"{self.code}:{self.message}:{','.join(self.fields)} --"


def not_found() -> SalesforceError:
    return SalesforceError("NOT_FOUND", "The requested resource does not exist", status=404)


def entity_is_deleted() -> SalesforceError:
    return SalesforceError("ENTITY_IS_DELETED", "entity is deleted", status=404)


def invalid_session() -> SalesforceError:
    return SalesforceError("INVALID_SESSION_ID", "Session expired or invalid", status=401)
