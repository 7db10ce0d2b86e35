"""What crmsync runs when nothing is configured: the shipped mappings against one CRM account."""
from __future__ import annotations

from crmsync import connectors
from crmsync.config import Mapping


def default_mappings(account: str, crm_type: str = "salesforce") -> list[Mapping]:
    """The seed's objects (accounts, contacts, purchases) mapped for `account`, as its connector ships them."""
    return [Mapping.model_validate(item) for item in connectors.connector(crm_type).default_mappings(account)]
