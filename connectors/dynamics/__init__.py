"""Microsoft Dynamics 365 (Dataverse) connector: Entra ID auth, the Web API client, and the connector parts
(crmsync/connectors.py) registered as account type `dynamics` under the `crmsync.connectors` entry points."""
from .connector import DynamicsConnector

CONNECTOR = DynamicsConnector()

__all__ = ["CONNECTOR", "DynamicsConnector"]
