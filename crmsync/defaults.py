"""What crmsync runs when nothing is configured: the shipped mappings against one CRM account."""
from __future__ import annotations

from pathlib import Path

import yaml

from crmsync.config import Mapping


def default_mappings(account: str) -> list[Mapping]:
    """The seed's objects (accounts, contacts, purchases) mapped for `account`."""
    text = (Path(__file__).parent / "default_mappings.yaml").read_text()
    return [Mapping.model_validate(item) for item in yaml.safe_load(text.replace("{account}", account))]
