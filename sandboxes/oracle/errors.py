"""The sandbox's one exception type, `OracleError`, and the catalogue of errors it raises.

An error renders two ways, as Oracle CRM On Demand renders it:
- REST: HTTP status + `{"Error": [{"problemType", "title", "httpStatus", "detail", "problemInstance",
  "errorCode", "OCRMODErrorDetail": {"Parameters": [...]}}]}` where `title` is the message template with `%1`..`%n`
  placeholders and `detail` the message with the parameters substituted, followed by `(SBL-...)`
  (REST API Developer's Guide, "Error Response Format", c-Error-Response-Format-and1025422.html).
- Web Services: a SOAP 1.1 fault (HTTP 500). Data errors carry `<siebelf:siebdetail>` with a log file name,
  error code, error symbol and message; session and limiter errors carry `<ErrorCode>` + `<ErrorMessage>`
  (Web Services On Demand Troubleshooting Guide, "Format of Error Codes", OnDem_WebTrbl_Overview3.html). These
  are the fields Adobe Campaign's OOD connector copied into its rejects (errorLogFilename, errorCode,
  errorSymbol, errorMessage).

Codes marked `documented` appear with that meaning in Oracle's pages; the others are Siebel-style codes chosen
by the sandbox (docs/oracle.md lists them) so that clients can still key on a stable `errorCode`.
"""
from __future__ import annotations

from dataclasses import dataclass

HELP_URL = "https://support.oracle.com/epmos/faces/DocumentDisplay?id=1802485.1"  # clientHelpURL in the docs


@dataclass(frozen=True)
class ErrorKind:
    code: str
    template: str  # %1..%n are replaced by the parameters, in order
    status: int = 400
    symbol: str = ""  # Siebel error symbol shown in SOAP fault details
    documented: bool = False


PICKLIST = ErrorKind("SBL-DAT-00225", "The value entered in field %2 of buscomp %3 does not match any value in "
                     "the bounded pick list %1.", symbol="IDS_ERR_FS_BOUNDED_PICKLIST", documented=True)
REQUIRED = ErrorKind("SBL-DAT-00498", "'%1' is a required field.  Please enter a value for the field.",
                     symbol="IDS_ERR_FS_MISSING_REQUIRED_FIELD")
DUPLICATE = ErrorKind("SBL-DAT-00381", "The same values for '%1' already exist. If you would like to enter a "
                      "new record, please make sure that the field values are unique.",
                      symbol="IDS_ERR_FS_DUPLICATE_VALUES")
TOO_LONG = ErrorKind("SBL-DAT-00235", "The value for field '%1' is longer than the maximum of %2 characters.",
                     symbol="IDS_ERR_FS_VALUE_TOO_LONG")
BAD_VALUE = ErrorKind("SBL-DAT-00359", "'%1' is not a valid %2 value for field '%3'.",
                      symbol="IDS_ERR_FS_INVALID_VALUE")
UNKNOWN_FIELD = ErrorKind("SBL-EAI-04127", "Field '%1' does not exist in definition for integration component "
                          "'%2'.", symbol="IDS_EAI_ERR_SA_NO_FIELD")
READ_ONLY = ErrorKind("SBL-DAT-00402", "Field '%1' of '%2' is read-only and cannot be set.",
                      symbol="IDS_ERR_FS_READ_ONLY_FIELD")
NO_RECORD = ErrorKind("SBL-EAI-04378", "No rows retrieved corresponding to the business component '%1' for "
                      "%2 '%3'.", status=404, symbol="IDS_EAI_ERR_SA_NO_ROW")
NO_REFERENCE = ErrorKind("SBL-DAT-00357", "The record '%1' referenced by field '%2' does not exist.",
                         symbol="IDS_ERR_FS_PICK_NO_ROW")
NO_USER_KEY = ErrorKind("SBL-EAI-04397", "No user key can be used for the Integration Component instance '%1'.",
                        symbol="IDS_EAI_ERR_SA_NO_USERKEY")
MULTIPLE_MATCH = ErrorKind("SBL-EAI-04390", "Multiple matches found for instance of integration component '%1' "
                           "using search specification '' in the business component '%1', based on user key "
                           "'%2'.", symbol="IDS_ERR_EAI_SA_MULTIPLE_MATCH", documented=True)
INVALID_OPERATION = ErrorKind("SBL-EAI-04009", "Invalid value for operation field: '%1'", documented=True)
QUERY_SYNTAX = ErrorKind("SBL-ODS-00125", "The search expression is not valid: %1")
QUERY_TOO_LONG = ErrorKind("SBL-ODS-00126", "The query expression is %1 characters long; the maximum supported "
                           "expression length is 4096 characters.")
SORT_AND_FILTER = ErrorKind("SBL-ODS-00127", "A query can either filter or sort its results, not both: remove "
                            "the %1 or the %2.")
BAD_PARAMETER = ErrorKind("SBL-ODS-00128", "The value '%1' of the URL parameter '%2' is not valid: %3")
BATCH_TOO_BIG = ErrorKind("SBL-ODU-01011", "The request contains %1 top-level records; a request can process at "
                          "most %2.")
PAGE_SIZE = ErrorKind("SBL-ODU-01012", "PageSize %1 is not valid: it must be between 1 and %2.")
NOT_FOUND = ErrorKind("SBL-ODS-00404", "The requested resource %1 was not found.", status=404)
METHOD = ErrorKind("SBL-ODS-00405", "The method %1 is not allowed on %2.", status=405)
MEDIA_TYPE = ErrorKind("SBL-ODS-00415", "The content type '%1' is not supported; send "
                       "application/vnd.oracle.adf.resource+json or application/json.", status=415)
BAD_BODY = ErrorKind("SBL-ODS-00400", "The request body is not valid: %1")
NOT_SIGNED_IN = ErrorKind("SBL-ODU-01001", "You are not signed in. Sign in through /OnDemand/user/Rest/"
                          "Connection or send an Authorization header.", status=403)
SESSION_INVALID = ErrorKind("SBL-ODU-01002", "The session is not valid. Request a new Oracle CRM On Demand "
                            "session.", status=401)
SESSION_GONE = ErrorKind("SBL-ODU-01006", "Internal Error: Session is not available. Aborting.", status=500,
                         documented=True)
SIGN_IN_FAILED = ErrorKind("SBL-ODU-01003", "The user name or password you entered is not valid.", status=401)
SESSION_QUOTA = ErrorKind("SBL-ODU-01004", "The maximum number of %1 concurrent sessions for the company has "
                          "been reached. Log off an existing session or wait for one to time out.", status=403)
REST_RATE = ErrorKind("SBL-ODU-01005", "The maximum rate of requests was exceeded. A maximum of %1 requests per "
                      "minute is allowed.", documented=True)
WS_RATE = ErrorKind("SBL-ODU-01007", "The maximum rate of requests was exceeded. Please try again in %1 ms.",
                    status=500, documented=True)
REQUEST_SIZE = ErrorKind("SBL-ODU-01008", "Request exceeded the size limit of %1 KB.", status=500, documented=True)
SOAP_INPUT = ErrorKind("SBL-EAI-04316", "Supplied input is not well formed or does not contain the expected "
                       "data: %1", status=500)
UNKNOWN_OPERATION = ErrorKind("SBL-EAI-04113", "Operation '%1' of Web Service 'urn:crmondemand/ws/ecbs/%2/' is "
                              "not supported.", status=500)
SERVER = ErrorKind("SBL-ODS-00500", "An unexpected error occurred in the crmsync sandbox.", status=500)


class OracleError(Exception):
    """An error as Oracle CRM On Demand reports it: a catalogue entry plus its parameters."""

    def __init__(self, kind: ErrorKind, *params: object, status: int | None = None) -> None:
        self.kind = kind
        self.params = [str(p) for p in params]
        self.status = status or kind.status
        super().__init__(self.detail)

    @property
    def code(self) -> str:
        return self.kind.code

    @property
    def message(self) -> str:
        """The template with the parameters substituted (highest placeholder first, so %1 never eats %10)."""
        text = self.kind.template
        for index in range(len(self.params), 0, -1):
            text = text.replace(f"%{index}", self.params[index - 1])
        return text

    @property
    def detail(self) -> str:
        return f"{self.message}({self.code})"

    def rest_body(self, instance: str) -> dict[str, object]:
        return {"Error": [{
            "problemType": HELP_URL, "title": self.kind.template, "httpStatus": self.status, "detail": self.detail,
            "problemInstance": f"urn:ocrmod:{instance}", "errorCode": self.code,
            "OCRMODErrorDetail": {"Parameters": self.params},
        }]}
