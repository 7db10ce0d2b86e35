"""The one place the names shared between services are made: consumer groups and checkpoints.

Why: a name built in two places drifts (the poller wrote `poller:salesforce:…` while the streams read it back
by retyping it). Services use these functions to name what they own; lag, readiness and the dashboard use the
same functions to find it. Topic names have their own module (crmsync/topics.py).
"""
from __future__ import annotations

STREAMS_GROUP = "crmsync-streams"


def campaign_writer_group(campaign: str) -> str:
    return f"crmsync-writer-campaign-{campaign}"


def crm_writer_group(account: str) -> str:
    return f"crmsync-writer-crm-{account}"


def mirror_group(account: str) -> str:
    return f"crmsync-mirror-{account}"


def service_group(service: str, campaign: str, account: str | None) -> str | None:
    """The consumer group a service of `crmsync run` consumes in (None: it is not a consumer)."""
    if service == "streams":
        return STREAMS_GROUP
    if service == "writer-campaign":
        return campaign_writer_group(campaign)
    if service == "writer-crm" and account:
        return crm_writer_group(account)
    if service == "mirror" and account:
        return mirror_group(account)
    return None


def poller_checkpoint(account: str, obj: str) -> str:
    """The checkpoint (crmsync.checkpoints) of one object's change source: {"v", "snapshot_done", "source"}."""
    return f"poller:{account}:{obj}"


def first_read_decided(mapping: str) -> str:
    """The checkpoint (crmsync.checkpoints) the streams store once the CRM's first read of a mapping is decided:
    {"v": 1}. A restarted worker finds it there instead of waiting for its group to catch up again."""
    return f"streams:first-read:{mapping}"
