"""Demo data for the Dynamics sandbox: N contacts and N/5 accounts, drawn from crmsync.people.

The people are the ones the Campaign seed uses (same person index -> same name and email), so a demo can start
with people known on both sides. Record ids are uuid5 of the person/company index, so a fresh sandbox always
has the same ids. Everything is inserted in one transaction with executemany: 100,000 contacts take seconds.
"""
from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta
from typing import Any

from crmsync import people

from .model import ACCOUNT, CONTACT, INDUSTRY
from .odata import format_datetime
from .store import Store

_IDS = uuid.UUID("6a1d3f0c-2b8e-4d7a-9c55-0e4f1b2a3c4d")
_SEED = 42
_CHUNK = 10_000


def record_id(kind: str, index: int) -> str:
    return str(uuid.uuid5(_IDS, f"{kind}:{index}"))


def seed_contacts(store: Store, count: int, *, user_id: str) -> int:
    """Insert `count` contacts and `count // 5` accounts into an empty store, once. Returns contacts added."""
    if count <= 0 or store.meta("seeded_contacts") is not None or store.count(CONTACT):
        return 0
    rng, now = random.Random(_SEED), store.now()
    accounts = max(1, count // 5)
    with store.atomic():
        for start in range(0, accounts, _CHUNK):  # chunks keep memory flat whatever N is
            rows, stamps = zip(*(_account(i, rng, now) for i in range(start, min(start + _CHUNK, accounts))))
            store.insert_many(ACCOUNT, rows, user_id=user_id, created=stamps)
        for start in range(0, count, _CHUNK):
            rows, stamps = zip(*(_contact(i, accounts, rng, now) for i in range(start, min(start + _CHUNK, count))))
            store.insert_many(CONTACT, rows, user_id=user_id, created=stamps)
        store.set_meta("seeded_contacts", str(count))
    return count


def _moment(rng: random.Random, now: datetime) -> str:
    return format_datetime(now - timedelta(seconds=int(rng.random() * 3 * 365 * 86400)))


def _account(index: int, rng: random.Random, now: datetime) -> tuple[dict[str, Any], str]:
    c = people.company(index, _SEED)
    industry = INDUSTRY.options[people.INDUSTRIES.index(c.industry) % len(INDUSTRY.options)].value
    return {"accountid": record_id("account", index), "name": c.name, "accountnumber": f"ACC-{index + 1:07d}",
            "telephone1": c.phone, "websiteurl": c.website, "emailaddress1": f"info@{c.website[12:]}",
            "address1_line1": c.street, "address1_city": c.city, "address1_stateorprovince": c.state,
            "address1_postalcode": c.zip_code, "address1_country": c.country, "industrycode": industry,
            "customertypecode": 3 if rng.random() < 0.6 else 8, "numberofemployees": c.employees,
            "revenue": float(c.employees * 120_000), "crmsync_campaignkey": f"ACC-{index + 1:07d}"}, \
        _moment(rng, now)


def _contact(index: int, accounts: int, rng: random.Random, now: datetime) -> tuple[dict[str, Any], str]:
    p = people.person(index, _SEED, companies=accounts)
    interests = sorted(rng.sample(range(1, 6), int(rng.random() * 3)))
    return {"contactid": record_id("contact", index), "firstname": p.first_name, "lastname": p.last_name,
            "emailaddress1": p.email, "telephone1": p.phone, "mobilephone": p.mobile_phone, "jobtitle": p.job_title,
            "birthdate": p.birth_date.isoformat(), "address1_line1": p.street, "address1_city": p.city,
            "address1_stateorprovince": p.state, "address1_postalcode": p.zip_code, "address1_country": p.country,
            "gendercode": 1 + int(rng.random() * 2), "preferredcontactmethodcode": 1 + int(rng.random() * 5),
            "crmsync_interests": ",".join(map(str, interests)) or None, "donotemail": int(rng.random() < 0.05),
            "donotphone": int(rng.random() < 0.03), "creditlimit": float(int(rng.random() * 50) * 1000),
            "parentcustomerid": record_id("account", p.company_index), "parentcustomerid__type": "account",
            "crmsync_campaignkey": f"CK-{index + 1:08d}"}, _moment(rng, now)
