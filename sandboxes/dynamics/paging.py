"""Paging cookies (`$skiptoken`) and change-tracking tokens (`$deltatoken`), in Dataverse's own formats.

A nextLink carries `$skiptoken=<cookie pagenumber="2" pagingcookie="..." istracking="False" />` URL-encoded, the
inner paging cookie itself URL-encoded once more, exactly like the example responses in
learn.microsoft.com/power-apps/developer/data-platform/webapi/query/page-results. Clients must treat it as
opaque; the sandbox puts what it needs to continue inside the inner cookie:

  * `last`  the primary id of the last row served (keyset paging in primary-key order, the default), or
  * `page`  the page number (offset paging when `$orderby` is given), and
  * `size`  the page size in force, so a client that re-sends only the query string keeps its page size,
  * `snapshot`/`phase` for change tracking: the row version the final deltaLink will carry and whether the
    new/updated rows or the deleted rows are being paged.

A delta token is `<row version>!<MM/dd/yyyy HH:mm:ss>` (UTC), like `919042!08/22/2017 08:10:44` in
use-change-tracking-synchronize-data-external-systems; the time lets the sandbox refuse tokens older than
ExpireChangeTrackingInDays.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import quote, unquote

from .errors import CHANGE_TRACKING, INVALID_PROPERTY, DataverseError, bad_request

_OUTER = re.compile(r'^<cookie pagenumber="(\d+)" pagingcookie="([^"]*)" istracking="(True|False)"\s*/>$')
_INNER_ATTR = re.compile(r'(\w+)="([^"]*)"')
_DELTA = re.compile(r"^(\d+)!(\d{2})/(\d{2})/(\d{4}) (\d{2}):(\d{2}):(\d{2})$")


@dataclass(frozen=True)
class Cookie:
    page: int  # the page this cookie asks for (2 for the first nextLink)
    size: int
    last: str | None = None  # keyset: last primary id served
    snapshot: int | None = None  # change tracking: version the deltaLink will carry
    phase: str = "rows"  # change tracking deltas: rows | deleted
    after: int | None = None  # change tracking deltas: last version served in this phase
    tracking: bool = False

    def encode(self, primary_id: str) -> str:
        fields = {"page": self.page - 1, "size": self.size, "phase": self.phase}
        if self.snapshot is not None:
            fields["snapshot"] = self.snapshot
        if self.after is not None:
            fields["after"] = self.after
        attrs = " ".join(f'{k}="{v}"' for k, v in fields.items())
        row = f'<{primary_id} last="{{{self.last.upper()}}}" />' if self.last else ""
        inner = f"<cookie {attrs}>{row}</cookie>"
        return f'<cookie pagenumber="{self.page}" pagingcookie="{quote(inner, safe="")}" ' \
               f'istracking="{"True" if self.tracking else "False"}" />'


def decode_cookie(skiptoken: str) -> Cookie:
    """Read a `$skiptoken` value (already URL-decoded once by the query string parser)."""
    match = _OUTER.match(skiptoken.strip())
    if match is None:
        raise bad_request("The $skiptoken value is not a valid paging cookie. Use the @odata.nextLink value as it "
                          "was returned.", INVALID_PROPERTY)
    inner = unquote(match.group(2))
    attrs = dict(_INNER_ATTR.findall(inner))
    try:
        last = attrs.get("last", "").strip("{}").lower() or None
        return Cookie(page=int(match.group(1)), size=int(attrs.get("size", "5000")), last=last,
                      snapshot=int(attrs["snapshot"]) if "snapshot" in attrs else None,
                      phase=attrs.get("phase", "rows"), after=int(attrs["after"]) if "after" in attrs else None,
                      tracking=match.group(3) == "True")
    except ValueError:
        raise bad_request("The $skiptoken value is not a valid paging cookie.", INVALID_PROPERTY) from None


def delta_token(version: int, moment: datetime) -> str:
    return f"{version}!{moment.astimezone(timezone.utc).strftime('%m/%d/%Y %H:%M:%S')}"


def read_delta_token(token: str, now: datetime, expire_days: int) -> int:
    """The row version in a delta token; 400s for a malformed token and for one older than the expiry window."""
    match = _DELTA.match(token.strip())
    if match is None:
        raise DataverseError(400, CHANGE_TRACKING, f"The delta token '{token}' is not valid. Use the "
                             "@odata.deltaLink of a change-tracking response as it was returned.")
    month, day, year, hour, minute, second = (int(g) for g in match.groups()[1:])
    issued = datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)
    if (now - issued).total_seconds() > expire_days * 86400:
        raise DataverseError(400, CHANGE_TRACKING, f"The change tracking token has expired: it is older than "
                             f"ExpireChangeTrackingInDays ({expire_days} days). Retrieve all rows again without a "
                             "delta token to get a new one.")
    return int(match.group(1))
