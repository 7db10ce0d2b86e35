"""The bad-input corpus (issue 13): values every entry point must either take or refuse with a reason that says
what to fix — never crash on, never pass on silently changed, never let stop what comes after.

Strings are sized for where they go: `BIG` is 2 MB, for places that are not messages (files, settings, query
filters); a value that travels as one Kafka message stays below the broker's message limit (the oversized
case is the throughput work's), hence `LARGE`.
"""
from __future__ import annotations

NUL = "Nul\x00Byte"
BIG = "x" * (2 * 1024 * 1024)  # 2 MB
LARGE = "y" * 300_000  # a change message carries it twice (before and after images): under 1 MB in all
EMOJI = "Zoë 😀 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ✓"  # 4-byte UTF-8 (astral planes) among 2- and 3-byte characters
INVALID_DATES = {"year 0": "0000-01-01", "year 99999": "99999-01-01", "February 30": "2024-02-30",
                 "before year 1 in UTC": "0001-01-01T00:30:00+01:00"}
TEXTS = {"NUL": NUL, "2 MB": BIG, "emoji": EMOJI, **INVALID_DATES}
