"""A record's message key decides its partition, so its bytes never change: the fast encoding (orjson, for
printable ASCII and 64-bit integers) writes exactly what json.dumps always wrote, for any key."""
from __future__ import annotations

import json
import random
import string

from crmsync.envelope import record_key


def _as_always(key: dict) -> bytes:
    return json.dumps(key, sort_keys=True, separators=(",", ":"), default=str).encode()


def test_record_keys_are_byte_for_byte_what_they_always_were():
    rng = random.Random(16)
    alphabet = string.printable + "\x00\x1f\x7f\"\\é中\u2028"
    values = [lambda: "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 18))),
              lambda: f"003{rng.randrange(10**15):015d}AAA", lambda: rng.randint(-2**70, 2**70),
              lambda: rng.randint(-2**63, 2**63), lambda: rng.choice([None, True, 1.5, -0.0, 10**20])]
    for _ in range(20_000):
        key = {"id": rng.choice(values)()}
        if rng.random() < 0.3:
            key[rng.choice(["b", "A", "zé", "a\x7f", "id2"])] = rng.choice(values)()
        assert record_key(key) == _as_always(key), key
