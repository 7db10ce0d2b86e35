"""The Salesforce connector: log in (auth), call the API under one retry policy (client), publish changes
(poller) and apply commands (writer). Service entry points live in `services.salesforce.service`."""
