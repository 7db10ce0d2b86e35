"""Deterministic, realistic demo data: accounts and their contacts, generated with plain `random`.

Speed matters more than variety: 100,000 contacts must be generated and stored in seconds, so names come from
short lists and everything is drawn from one `random.Random(seed)`. The same (n, seed) always yields the same
people in the same order, so record ids (which follow insertion order) are stable across machines.
Emails are `first.last.N@domain` with reserved example domains; a few names carry accents and apostrophes so
encodings get exercised.
"""
from __future__ import annotations

import random
import unicodedata
from functools import lru_cache
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Iterator

from .objects import CHANNELS, INDUSTRIES, INTERESTS, LEAD_SOURCES, RATINGS

FIRST_NAMES = ("James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda", "David", "Elizabeth",
               "William", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas", "Sarah", "Chris", "Karen",
               "Daniel", "Lisa", "Matthew", "Nancy", "Anthony", "Sandra", "Mark", "Ashley", "Paul", "Emily",
               "Hélène", "François", "Jürgen", "Sofía", "Chloé", "Lukas", "Léa", "Mateo", "Yuki", "Hiroshi",
               "Aisha", "Omar", "Priya", "Arjun", "Mei", "Wei", "Olga", "Ivan", "Niamh", "Seán")
LAST_NAMES = ("Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez",
              "Hernandez", "Lopez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore", "Jackson", "Martin", "Lee",
              "Thompson", "White", "Harris", "Clark", "Lewis", "Robinson", "Walker", "Young", "Allen", "King",
              "Dubois", "Lefèvre", "Müller", "Schneider", "Fernández", "Rossi", "Bianchi", "de Vries", "Tanaka",
              "Suzuki", "Khan", "Patel", "Singh", "Chen", "Wang", "Ivanova", "O'Brien", "Murphy", "Nguyen", "Kim")
TITLES = ("Marketing Manager", "VP Marketing", "CMO", "Sales Director", "Account Executive", "CTO", "CEO",
          "Operations Manager", "Procurement Lead", "Data Analyst", "Product Manager", "IT Director", "Buyer")
DEPARTMENTS = ("Marketing", "Sales", "IT", "Finance", "Operations", "Procurement", "Executive", "Product")
COMPANY_WORDS = ("Acme", "Globex", "Initech", "Umbrella", "Stark", "Wayne", "Vandelay", "Hooli", "Soylent",
                 "Cyberdyne", "Tyrell", "Wonka", "Nakatomi", "Oscorp", "Aperture", "Blue Harbor", "Northwind",
                 "Contoso", "Fabrikam", "Tailspin", "Lumen", "Zenith", "Polar", "Summit", "Evergreen")
COMPANY_KINDS = ("Logistics", "Foods", "Systems", "Industries", "Labs", "Consulting", "Energy", "Media", "Retail",
                 "Health", "Capital", "Software", "Motors", "Telecom", "Travel")
STREETS = ("Main Street", "High Street", "Rue de Rivoli", "Hauptstraße", "Calle Mayor", "Market Street",
           "King Street", "Church Road", "Station Road", "Park Avenue")
DOMAINS = ("example.com", "example.org", "example.net", "mail.example", "inbox.example")
SALUTATIONS = ("Mr.", "Ms.", "Mrs.", "Dr.", "Mx.")


@dataclass(frozen=True)
class Country:
    name: str
    phone_prefix: str
    cities: tuple[tuple[str, str | None], ...]  # (city, state or None)


COUNTRIES = (
    Country("United States", "+1", (("New York", "NY"), ("Chicago", "IL"), ("San Francisco", "CA"),
                                    ("Austin", "TX"))),
    Country("Canada", "+1", (("Toronto", "ON"), ("Vancouver", "BC"))),
    Country("United Kingdom", "+44", (("London", None), ("Manchester", None))),
    Country("France", "+33", (("Paris", None), ("Lyon", None))),
    Country("Germany", "+49", (("Berlin", None), ("München", None))),
    Country("Spain", "+34", (("Madrid", None), ("Barcelona", None))),
    Country("Italy", "+39", (("Milano", None), ("Roma", None))),
    Country("Netherlands", "+31", (("Amsterdam", None), ("Utrecht", None))),
    Country("Japan", "+81", (("Tokyo", None), ("Osaka", None))),
    Country("Australia", "+61", (("Sydney", "NSW"), ("Melbourne", "VIC"))),
    Country("Brazil", "+55", (("São Paulo", "SP"), ("Rio de Janeiro", "RJ"))),
)
COUNTRY_WEIGHTS = (30, 6, 12, 10, 10, 5, 5, 4, 8, 5, 5)
_CUM_WEIGHTS = tuple(sum(COUNTRY_WEIGHTS[:i + 1]) for i in range(len(COUNTRY_WEIGHTS)))


def _int(rng: random.Random, low: int, high: int) -> int:
    """rng.randint without its argument checking, which dominates the cost of generating 100k people."""
    return low + int(rng.random() * (high - low + 1))


def _pick(rng: random.Random, seq: tuple[Any, ...]) -> Any:
    return seq[int(rng.random() * len(seq))]


@lru_cache(maxsize=None)
def _ascii(text: str) -> str:
    """Email-safe form of a name: accents stripped, spaces and apostrophes removed, lower case."""
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(ch for ch in plain if ch.isalnum()).lower()


def _phone(rng: random.Random, country: Country) -> str:
    return f"{country.phone_prefix} {_int(rng, 100, 999)} {_int(rng, 100, 999)} {_int(rng, 1000, 9999)}"


def _address(rng: random.Random, country: Country, prefix: str) -> dict[str, Any]:
    city, state = _pick(rng, country.cities)
    return {f"{prefix}Street": f"{_int(rng, 1, 250)} {_pick(rng, STREETS)}", f"{prefix}City": city,
            f"{prefix}State": state, f"{prefix}PostalCode": f"{_int(rng, 10000, 99999)}",
            f"{prefix}Country": country.name}


def _moment(rng: random.Random, now: datetime, max_days: int) -> datetime:
    return now - timedelta(seconds=_int(rng, 0, max_days * 86400), milliseconds=_int(rng, 0, 999))


def accounts(rng: random.Random, count: int, now: datetime) -> Iterator[dict[str, Any]]:
    for i in range(1, count + 1):
        country = rng.choices(COUNTRIES, cum_weights=_CUM_WEIGHTS)[0]
        name = f"{_pick(rng, COMPANY_WORDS)} {_pick(rng, COMPANY_KINDS)} {i}"
        created = _moment(rng, now, 3 * 365)
        yield {
            "Name": name, "Type": _pick(rng, ("Prospect", "Customer - Direct", "Customer - Channel")),
            **_address(rng, country, "Billing"), "Phone": _phone(rng, country),
            "Website": f"https://www.{_ascii(name)}.example", "Industry": _pick(rng, INDUSTRIES),
            "AnnualRevenue": float(rng.randrange(100_000, 500_000_000, 10_000)),
            "NumberOfEmployees": _int(rng, 5, 50_000), "Rating": _pick(rng, RATINGS),
            "AccountSource": _pick(rng, LEAD_SOURCES), "Campaign_Key__c": f"ACC-{i:07d}",
            "_created": created, "_modified": min(now, created + timedelta(days=_int(rng, 0, 400))),
        }


def contacts(rng: random.Random, count: int, account_count: int, now: datetime) -> Iterator[dict[str, Any]]:
    """Yield contacts; `_account` is an index into the accounts generated alongside (or None), not an id."""
    for i in range(1, count + 1):
        country = rng.choices(COUNTRIES, cum_weights=_CUM_WEIGHTS)[0]
        first, last = _pick(rng, FIRST_NAMES), _pick(rng, LAST_NAMES)
        created = _moment(rng, now, 3 * 365)
        interests = sorted(rng.sample(range(len(INTERESTS)), _int(rng, 0, 3)))
        yield {
            "Salutation": _pick(rng, SALUTATIONS), "FirstName": first, "LastName": last,
            **_address(rng, country, "Mailing"), "Phone": _phone(rng, country), "MobilePhone": _phone(rng, country),
            "Email": f"{_ascii(first)}.{_ascii(last)}.{i}@{_pick(rng, DOMAINS)}",
            "Title": _pick(rng, TITLES), "Department": _pick(rng, DEPARTMENTS),
            "Birthdate": (date(1950, 1, 1) + timedelta(days=_int(rng, 0, 54 * 365))).isoformat(),
            "LeadSource": _pick(rng, LEAD_SOURCES), "HasOptedOutOfEmail": int(rng.random() < 0.05),
            "DoNotCall": int(rng.random() < 0.03), "Interests__c": ";".join(INTERESTS[k] for k in interests) or None,
            "Preferred_Channel__c": _pick(rng, CHANNELS), "Campaign_Key__c": f"CK-{i:08d}",
            "_account": rng.randrange(account_count) if account_count and rng.random() > 0.02 else None,
            "_created": created, "_modified": min(now, created + timedelta(days=_int(rng, 0, 400))),
        }
