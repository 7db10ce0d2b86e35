"""The built-in dashboard: lag, freshness, Burrow-like status, ETA, API budget, rejects and record journeys.

`crmsync run` serves it (default http://127.0.0.1:8080); `crmsync dashboard` serves it alone (a container).
sampler.py measures, journey.py follows one record, app.py serves the page and its JSON API.
"""
