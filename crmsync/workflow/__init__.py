"""Workflows: YAML graphs of activities (query, crm connector, enrich, deduplicate, update data, union, wait,
script) run once with `crmsync workflow run FILE` or on a cron `schedule:` by `crmsync run`. See
docs/workflows.md."""
