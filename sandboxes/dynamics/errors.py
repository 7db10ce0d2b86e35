"""Dataverse's error shape and the codes the sandbox answers with.

Every Web API error is `{"error": {"code": "0x8004....", "message": "..."}}` with the HTTP status Dataverse uses
(learn.microsoft.com/power-apps/developer/data-platform/webapi/compose-http-requests-handle-errors and
.../reference/web-service-error-codes). Clients key on `error.code` and `error.message`; the codes below are the
documented ones for each situation.
"""
from __future__ import annotations

from typing import Any

RECORD_NOT_FOUND = "0x80040217"
DUPLICATE_RECORD = "0x80040237"
CONCURRENCY_VERSION_MISMATCH = "0x80060882"
INVALID_PROPERTY = "0x80060888"  # also query syntax errors (the OData layer rejects them)
INVALID_ARGUMENT = "0x80040203"
VALIDATION = "0x80044331"
PICKLIST_OUT_OF_RANGE = "0x8004431a"
PAYLOAD = "0x80048d19"
METHOD_NOT_ALLOWED = "0x80060374"
REQUESTS_EXCEEDED = "0x80072322"
EXECUTION_TIME_EXCEEDED = "0x80072321"
CONCURRENCY_EXCEEDED = "0x80072326"
CHANGE_TRACKING = "0x80044184"
BATCH_TOO_LARGE = "0x8006088a"
UNAUTHORIZED = "0x80072560"
SERVICE_UNAVAILABLE = "0x80040216"


class DataverseError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message = status, code, message

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


def bad_request(message: str, code: str = INVALID_ARGUMENT) -> DataverseError:
    return DataverseError(400, code, message)


def not_found(entity: str, record_id: str) -> DataverseError:
    return DataverseError(404, RECORD_NOT_FOUND, f"{entity} With Id = {record_id} Does Not Exist")


def no_property(name: str, entity: str) -> DataverseError:
    return DataverseError(400, INVALID_PROPERTY,
                          f"Could not find a property named '{name}' on type 'Microsoft.Dynamics.CRM.{entity}'.")


def no_resource(path: str) -> DataverseError:
    return DataverseError(404, "0x80060888", f"Resource not found for the segment '{path}'.")
