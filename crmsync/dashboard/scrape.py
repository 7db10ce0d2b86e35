"""Read the services' own /metrics, like Prometheus does, so the dashboard shows the same numbers.

Freshness and the CRM API budget are measured where they happen (the writers, the CRM client); the dashboard
only reads them. A target that does not answer is reported, never invented.
"""
from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]  # (sample name, sorted labels) → value


def scrape(url: str, timeout: float = 2.0) -> Series:
    """Every sample of one /metrics endpoint."""
    answer = httpx.get(url, timeout=timeout)
    answer.raise_for_status()
    series: Series = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            series[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return series


def scrape_all(targets: dict[str, str]) -> tuple[Series, dict[str, str]]:
    """All targets merged, and target name → "ok" or why it could not be read."""
    merged: Series = {}
    health: dict[str, str] = {}
    for name, url in sorted(targets.items()):
        try:  # each sample keeps its target, so two services reporting the same series are both seen
            merged.update({(sample, (*labels, ("target", name))): value
                           for (sample, labels), value in scrape(url).items()})
            health[name] = "ok"
        except (httpx.HTTPError, ValueError) as exc:
            health[name] = f"{type(exc).__name__}: {exc}"
    return merged, health


def samples(series: Series, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample called `name`."""
    return [(dict(labels), value) for (sample, labels), value in series.items() if sample == name]
