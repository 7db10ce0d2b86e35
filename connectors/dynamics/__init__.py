"""Microsoft Dynamics 365 (Dataverse) connector: Entra ID auth and the Web API client."""
