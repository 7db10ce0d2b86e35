"""Seed the sandbox with demo accounts and contacts, fast and deterministically.

People and companies come from `crmsync.people`, the generator the Campaign seed uses too, so person N has the
same name and email on both sides of a demo. Contact N gets `ExternalSystemId` CK-<N, 8 digits> and account N
ACC-<N, 7 digits> (the Campaign key the sync connector matches on). Audit stamps are spread over the last three
years of the sandbox clock. Rows are built in memory and inserted with one executemany per record type inside
one transaction: 100,000 contacts and 20,000 accounts take a few seconds.
"""
from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

from crmsync import people

from .model import ACCOUNT, CONTACT
from .store import Store
from .values import utc_text

SEED = 20240501
_CONTACT_TYPES = ("Customer", "Prospect", "Partner", "Other")
_SOURCES = ("WEB", "EMAIL", "EVENT", "REFERRAL", "PARTNER", "COLD_CALL")
_CHANNELS = ("Email", "Phone", "Mail", "SMS")
_ACCOUNT_TYPES = ("Customer", "Prospect", "Partner", "Reseller")
_REGIONS = {"US": "West", "CA": "North", "BR": "South", "JP": "East"}


def seed_contacts(store: Store, count: int, *, user_id: str) -> int:
    """Insert `count` contacts and count/5 accounts into an empty store; returns how many contacts were added
    (0 when the store already holds contacts or was seeded before)."""
    if count <= 0 or store.meta("seeded_contacts") is not None or store.count(CONTACT):
        return 0
    rng, now = random.Random(SEED), store.now()
    account_count = max(1, count // 5)
    with store.atomic():
        account_ids = store.next_ids(account_count)
        store.bulk_insert(ACCOUNT, [_account(rng, i, account_ids[i], user_id, now) for i in range(account_count)])
        contact_ids = store.next_ids(count)
        store.bulk_insert(CONTACT, [_contact(rng, i, contact_ids[i], account_ids, user_id, now)
                                    for i in range(count)])
        store.set_meta("seeded_contacts", str(count))
    return count


def _stamps(rng: random.Random, now: datetime) -> dict[str, str]:
    created = now - timedelta(seconds=int(rng.random() * 3 * 365 * 86400))
    modified = min(now, created + timedelta(seconds=int(rng.random() * 400 * 86400)))
    return {"CreatedDate": utc_text(created), "ModifiedDate": utc_text(modified)}


def _account(rng: random.Random, index: int, record_id: str, user_id: str, now: datetime) -> dict[str, Any]:
    c = people.company(index)
    return {
        "Id": record_id, "ExternalSystemId": f"ACC-{index + 1:07d}", "AccountName": c.name, "Location": c.city,
        "AccountType": _ACCOUNT_TYPES[int(rng.random() * len(_ACCOUNT_TYPES))], "Industry": c.industry,
        "Region": _REGIONS.get(c.country_code, "Central"), "PublicCompany": int(rng.random() < 0.2),
        "Reference": int(rng.random() < 0.1), "NumberEmployees": c.employees,
        "AnnualRevenues": float(c.employees * 150_000), "CurrencyCode": "USD", "MainPhone": c.phone,
        "WebSite": c.website, "PrimaryBillToStreetAddress": c.street, "PrimaryBillToCity": c.city,
        "PrimaryBillToState": c.state, "PrimaryBillToPostalCode": c.zip_code, "PrimaryBillToCountry": c.country,
        "OwnerId": user_id, "CreatedById": user_id, "ModifiedById": user_id, **_stamps(rng, now),
    }


def _contact(rng: random.Random, index: int, record_id: str, account_ids: list[str], user_id: str,
             now: datetime) -> dict[str, Any]:
    p = people.person(index, companies=len(account_ids))
    return {
        "Id": record_id, "ExternalSystemId": f"CK-{index + 1:08d}", "ContactFirstName": p.first_name,
        "ContactLastName": p.last_name, "ContactEmail": p.email, "JobTitle": p.job_title,
        "ContactType": _CONTACT_TYPES[int(rng.random() * len(_CONTACT_TYPES))], "WorkPhone": p.phone,
        "CellularPhone": p.mobile_phone, "AlternateAddress1": p.street, "AlternateCity": p.city,
        "AlternateStateProvince": p.state, "AlternateZipCode": p.zip_code, "AlternateCountry": p.country,
        "DateofBirth": p.birth_date.isoformat(), "LeadSource": _SOURCES[int(rng.random() * len(_SOURCES))],
        "NeverEmail": int(rng.random() < 0.05), "NeverCall": int(rng.random() < 0.03),
        "AccountId": account_ids[p.company_index] if rng.random() > 0.02 else None,
        "CustomPickList0": _CHANNELS[int(rng.random() * len(_CHANNELS))], "CustomNumber0": int(rng.random() * 100),
        "OwnerId": user_id, "CreatedById": user_id, "ModifiedById": user_id, **_stamps(rng, now),
    }
