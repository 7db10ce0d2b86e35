"""Deleted items with exact deletion instants, for the change source and the record query.

DeletedItemQueryPage writes DeletedDate as the user's wall-clock time (`MM/DD/YYYY hh:mm:ss`), which names two
instants during the hour repeated when daylight-saving time ends; webservices.py reads such a time as its first
occurrence. Queries, though, take XSD UTC instants, which OOD compares exactly. So an item whose DeletedDate is
ambiguous is settled with one more query: if OOD still finds it with `DeletedDate > <first reading>`, it was
deleted at the second occurrence. Outside that hour (all but one hour a year) nothing extra is asked.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Mapping

from .query import ws_term
from .timezone import UserClock
from .webservices import DeletedItem, WebServices


def deleted_page(web_services: WebServices, clock: UserClock, filters: Mapping[str, str], *, start: int = 0,
                 page_size: int | None = None) -> tuple[list[DeletedItem], bool]:
    """One page of DeletedItemQueryPage (sorted by DeletedDate), every `deleted_at` the exact instant."""
    items, last_page = web_services.deleted_item_page(filters, start=start, page_size=page_size)
    return [_settled(web_services, clock, item) for item in items], last_page


def _settled(web_services: WebServices, clock: UserClock, item: DeletedItem) -> DeletedItem:
    wall = clock.wall_of(item.deleted_text)
    if not clock.is_ambiguous(wall):
        return item
    later, _ = web_services.deleted_item_page({"DeletedItemId": ws_term("=", item.deleted_item_id),
                                               "DeletedDate": ws_term(">", item.deleted_at)}, page_size=1)
    return replace(item, deleted_at=clock.second_reading(wall)) if later else item
