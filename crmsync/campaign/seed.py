"""`crmsync campaign seed`: fill the Campaign database with realistic, deterministic data, fast (COPY)."""
from __future__ import annotations

import random
from datetime import date, timedelta
from typing import Callable, Mapping, Sequence

from crmsync import people, pg

RECIPIENT_COLUMNS = ("email", "first_name", "last_name", "company", "job_title", "phone", "mobile_phone",
                     "birth_date", "street", "city", "zip_code", "state", "country_code", "language",
                     "email_opt_out", "blacklisted", "organisation_id")
ORGANISATION_COLUMNS = ("name", "industry", "employees", "street", "city", "zip_code", "state", "country_code",
                        "website", "phone")
PURCHASE_COLUMNS = ("product", "amount", "currency", "purchase_date", "stage", "recipient_id", "organisation_id")


def seed(dsn: str, recipients: int, *, seed: int = 42, first_person: int = 0,
         shared_emails: list[str] | None = None, vocabularies: Mapping[str, Sequence[str]] | None = None,
         progress: Callable[[int], None] | None = None) -> dict[str, int]:
    """Insert `recipients` people (person indexes first_person..), one organisation per five recipients and
    one purchase per two. Same arguments → same data, so demos and tests can rely on it. The first recipients
    take `shared_emails` (e.g. emails of CRM contacts), so a demo starts with people known on both sides; no
    other recipient gets one of those emails. `vocabularies` ("organisations.industry", "purchases.stage") are
    the values a CRM's picklist allows: a seeded word it does not know is replaced by one it does."""
    shared_emails = shared_emails or []
    taken = {email.lower() for email in shared_emails}
    industry = _vocabulary(people.INDUSTRIES, (vocabularies or {}).get("organisations.industry"))
    stage = _vocabulary(people.STAGES, (vocabularies or {}).get("purchases.stage"))
    organisations = max(1, recipients // 5)
    with pg.connect(dsn, application="crmsync-seed") as conn:
        org_base = conn.execute("SELECT coalesce(max(id), 0) FROM organisations").fetchone()[0]
        with conn.cursor().copy(f"COPY organisations ({', '.join(ORGANISATION_COLUMNS)}) FROM STDIN") as copy:
            for index in range(organisations):
                c = people.company(first_person // 5 + index, seed)
                copy.write_row((c.name, industry(c.industry), c.employees, c.street, c.city, c.zip_code, c.state,
                                c.country_code, c.website, c.phone))
        org_ids = [row[0] for row in conn.execute(
            "SELECT id FROM organisations WHERE id > %s ORDER BY id", (org_base,))]
        recipient_base = conn.execute("SELECT coalesce(max(id), 0) FROM recipients").fetchone()[0]
        rng = random.Random(seed)
        with conn.cursor().copy(f"COPY recipients ({', '.join(RECIPIENT_COLUMNS)}) FROM STDIN") as copy:
            for index in range(recipients):
                p = people.person(first_person + index, seed, companies=organisations)
                org = org_ids[index % len(org_ids)]
                email = shared_emails[index] if index < len(shared_emails) else _unique(p.email, index, taken)
                copy.write_row((email, p.first_name, p.last_name, None, p.job_title, p.phone, p.mobile_phone,
                                p.birth_date, p.street, p.city, p.zip_code, p.state, p.country_code, p.language,
                                rng.random() < 0.05, rng.random() < 0.01, org))
                if progress and index % 1000 == 999:
                    progress(1000)
        conn.execute("""UPDATE recipients r SET company = o.name FROM organisations o
                        WHERE r.organisation_id = o.id AND r.id > %s""", (recipient_base,))
        recipient_ids = [row[0] for row in conn.execute(
            "SELECT id FROM recipients WHERE id > %s ORDER BY id", (recipient_base,))]
        purchases = 0
        with conn.cursor().copy(f"COPY purchases ({', '.join(PURCHASE_COLUMNS)}) FROM STDIN") as copy:
            for index, recipient_id in enumerate(recipient_ids[::2]):
                copy.write_row((rng.choice(people.PRODUCTS), round(rng.uniform(50, 50_000), 2), "EUR",
                                date(2025, 1, 1) + timedelta(days=rng.randint(0, 600)), stage(rng.choice(people.STAGES)),
                                recipient_id, org_ids[(index * 2) % len(org_ids)]))
                purchases += 1
    if progress:
        progress(recipients % 1000)
    return {"organisations": organisations, "recipients": recipients, "purchases": purchases}


def _vocabulary(words: Sequence[str], allowed: Sequence[str] | None) -> Callable[[str], str]:
    """`word` itself when the CRM allows it (or nothing is said), else the allowed value at the same position."""
    if not allowed or set(words) <= set(allowed):
        return lambda word: word
    return lambda word: allowed[words.index(word) % len(allowed)] if word in words else word


def _unique(email: str, index: int, taken: set[str]) -> str:
    """`email`, or a variant of it when a shared email already took it (no two recipients share an email)."""
    if email.lower() in taken:
        local, _, domain = email.partition("@")
        email = f"{local}.{index}@{domain}"
    taken.add(email.lower())
    return email
