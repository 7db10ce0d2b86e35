-- External CRM accounts, generated CRM schemas, CRM picklist values and enumeration maps (docs/wizard.md).
-- Secrets are a Fernet token (never plain text); the key lives outside the database.

CREATE TABLE IF NOT EXISTS crmsync.external_accounts (
    name        text PRIMARY KEY,
    type        text NOT NULL,
    settings    jsonb NOT NULL,          -- every non-secret field of the account
    secrets     text NOT NULL,           -- Fernet token of a JSON object of the secret fields
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One generated schema description per account (e.g. sfdc:sfdcSchemasalesforceCRM); its presence = "configured".
CREATE TABLE IF NOT EXISTS crmsync.crm_schemas (
    account       text PRIMARY KEY,
    name          text NOT NULL,
    namespace     text NOT NULL,
    mirror_schema text NOT NULL,
    document      jsonb NOT NULL,
    generated_at  timestamptz NOT NULL DEFAULT now()
);

-- The CRM's picklist values as last discovered; multi-select mirror columns are checked against them.
CREATE TABLE IF NOT EXISTS crmsync.crm_enumeration_values (
    account      text NOT NULL,
    enumeration  text NOT NULL,
    value        text NOT NULL,
    label        text NOT NULL,
    position     integer NOT NULL,
    PRIMARY KEY (account, enumeration, value)
);

-- Reads the table above, so a CHECK using it follows value changes without any DDL.
CREATE OR REPLACE FUNCTION crmsync.crm_enum_ok(p_account text, p_enumeration text, p_values text[])
RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT p_values IS NULL OR NOT EXISTS (
        SELECT 1 FROM unnest(p_values) AS v(value)
        WHERE v.value IS NULL OR NOT EXISTS (
            SELECT 1 FROM crmsync.crm_enumeration_values e
            WHERE e.account = p_account AND e.enumeration = p_enumeration AND e.value = v.value))
$$;

-- CRM picklist -> Campaign enumeration, with the value translation decided at the last `enums sync`.
CREATE TABLE IF NOT EXISTS crmsync.enumeration_maps (
    account          text NOT NULL,
    crm_enumeration  text NOT NULL,
    enumeration_id   bigint NOT NULL REFERENCES enumerations(id) ON DELETE CASCADE,
    replace          boolean NOT NULL DEFAULT false,
    value_map        jsonb NOT NULL DEFAULT '{}',   -- CRM value -> Campaign value
    synced_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account, crm_enumeration)
);
