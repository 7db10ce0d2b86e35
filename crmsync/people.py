"""Deterministic, realistic-looking people and companies for seeds and demos (no Faker: fast and offline).

Both the Campaign seed and the CRM sandboxes draw from here, so a demo can make the two sides share a known
set of people (same person index → same name and email on both sides).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, timedelta

FIRST_NAMES = ("Anna", "Ben", "Chloé", "David", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Karin", "Liam",
               "Maya", "Noah", "Olga", "Pablo", "Quinn", "Rosa", "Sami", "Tara", "Umar", "Vera", "Wei", "Xenia",
               "Yusuf", "Zoé", "Marta", "Louis", "Aiko", "Diego", "Freya", "Ivan", "Lena", "Mateo", "Nora", "Omar")
LAST_NAMES = ("Smith", "Müller", "Dubois", "Rossi", "García", "Nowak", "Jensen", "Silva", "Kowalski", "Novak",
              "Tanaka", "Okafor", "Johansson", "Martin", "Bernard", "Fischer", "Weber", "Costa", "Lopez", "Kim",
              "Nguyen", "Brown", "Wilson", "Moreau", "Laurent", "Schmidt", "Ferrari", "Horvat", "Petrov", "Yilmaz")
COMPANY_WORDS = ("Acme", "Globex", "Initech", "Umbrella", "Stark", "Wayne", "Wonka", "Tyrell", "Cyberdyne", "Soylent",
                 "Hooli", "Vandelay", "Pied Piper", "Aperture", "Massive", "Oscorp", "Gringotts", "Monarch")
COMPANY_SUFFIXES = ("Ltd", "GmbH", "SA", "Inc", "BV", "AB", "SpA", "Group", "Labs", "Partners")
INDUSTRIES = ("Agriculture", "Banking", "Biotechnology", "Chemicals", "Communications", "Construction", "Consulting",
              "Education", "Electronics", "Energy", "Engineering", "Entertainment", "Finance", "Healthcare",
              "Hospitality", "Insurance", "Manufacturing", "Media", "Retail", "Technology", "Transportation")
JOB_TITLES = ("CEO", "CFO", "CMO", "Marketing Manager", "Sales Director", "Account Executive", "Engineer",
              "Product Manager", "Buyer", "Office Manager", "Analyst", "Consultant", "Head of Operations")
# (country code, country name, language, city, state, phone prefix)
PLACES = (("FR", "France", "fr", "Paris", "Île-de-France", "+33"), ("DE", "Germany", "de", "Berlin", "Berlin", "+49"),
          ("US", "United States", "en", "Chicago", "IL", "+1"), ("GB", "United Kingdom", "en", "London", "England", "+44"),
          ("ES", "Spain", "es", "Madrid", "Madrid", "+34"), ("IT", "Italy", "it", "Milan", "Lombardy", "+39"),
          ("NL", "Netherlands", "nl", "Amsterdam", "North Holland", "+31"), ("JP", "Japan", "ja", "Tokyo", "Tokyo", "+81"),
          ("BR", "Brazil", "pt", "São Paulo", "SP", "+55"), ("CA", "Canada", "en", "Toronto", "ON", "+1"))
STREETS = ("Main Street", "Rue de la Paix", "Hauptstraße", "Calle Mayor", "Via Roma", "Kerkstraat", "High Street")
PRODUCTS = ("Starter plan", "Pro plan", "Enterprise plan", "Onboarding package", "Support add-on", "Analytics add-on")
STAGES = ("Prospecting", "Qualification", "Proposal/Price Quote", "Negotiation/Review", "Closed Won", "Closed Lost")


@dataclass(frozen=True, slots=True)
class Person:
    index: int
    first_name: str
    last_name: str
    email: str
    phone: str
    mobile_phone: str
    job_title: str
    birth_date: date
    street: str
    city: str
    zip_code: str
    state: str
    country_code: str
    country: str
    language: str
    company_index: int


@dataclass(frozen=True, slots=True)
class Company:
    index: int
    name: str
    industry: str
    employees: int
    website: str
    phone: str
    street: str
    city: str
    zip_code: str
    state: str
    country_code: str
    country: str


def _rng(kind: str, index: int, seed: int) -> random.Random:
    return random.Random(f"{seed}:{kind}:{index}")


def person(index: int, seed: int = 42, companies: int = 1) -> Person:
    """Person number `index`; the same (index, seed) always gives the same person on every side."""
    rng = _rng("person", index, seed)
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    code, country, language, city, state, prefix = rng.choice(PLACES)
    ascii_first = first.encode("ascii", "ignore").decode().lower() or "x"
    ascii_last = last.encode("ascii", "ignore").decode().lower() or "x"
    return Person(
        index=index, first_name=first, last_name=last,
        email=f"{ascii_first}.{ascii_last}.{index}@example.com",
        phone=f"{prefix} {rng.randint(100, 999)} {rng.randint(1000, 9999)}",
        mobile_phone=f"{prefix} 6{rng.randint(10, 99)} {rng.randint(100000, 999999)}",
        job_title=rng.choice(JOB_TITLES),
        birth_date=date(1950, 1, 1) + timedelta(days=rng.randint(0, 18_000)),
        street=f"{rng.randint(1, 200)} {rng.choice(STREETS)}", city=city,
        zip_code=f"{rng.randint(10000, 99999)}", state=state, country_code=code, country=country,
        language=language, company_index=index % max(companies, 1),
    )


def company(index: int, seed: int = 42) -> Company:
    rng = _rng("company", index, seed)
    code, country, _language, city, state, prefix = rng.choice(PLACES)
    name = f"{rng.choice(COMPANY_WORDS)} {rng.choice(COMPANY_SUFFIXES)} {index}"
    slug = name.lower().replace(" ", "-")
    return Company(
        index=index, name=name, industry=rng.choice(INDUSTRIES), employees=rng.choice((5, 20, 80, 250, 1200, 9000)),
        website=f"https://www.{slug}.example", phone=f"{prefix} {rng.randint(100, 999)} {rng.randint(1000, 9999)}",
        street=f"{rng.randint(1, 200)} {rng.choice(STREETS)}", city=city, zip_code=f"{rng.randint(10000, 99999)}",
        state=state, country_code=code, country=country,
    )
