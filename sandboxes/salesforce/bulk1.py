"""Bulk API 1.0 (placeholder, replaced below)."""
from __future__ import annotations

from starlette.routing import Route


class Bulk1Jobs:
    pass


def routes() -> list[Route]:
    return []
