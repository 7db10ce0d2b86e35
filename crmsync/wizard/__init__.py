"""The CRM configuration wizard: discovery (per CRM), schema generation, mirror tables, formula refresh."""
