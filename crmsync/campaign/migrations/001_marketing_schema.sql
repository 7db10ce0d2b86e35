-- The Campaign marketing schema: recipients, organisations, purchases and enumerations.
-- Every synced table has a primary key (change capture refuses tables without one), CRM link columns
-- (crm_account, crm_id) and REPLICA IDENTITY FULL so that updates and deletes carry the whole old row
-- (see docs/change-capture.md for how unchanged TOAST values are filled from it).

CREATE TABLE IF NOT EXISTS organisations (
    id            bigserial PRIMARY KEY,
    name          text NOT NULL,
    industry      text,
    employees     integer CHECK (employees IS NULL OR employees >= 0),
    street        text,
    city          text,
    zip_code      text,
    state         text,
    country_code  text,
    website       text,
    phone         text,
    crm_account   text,
    crm_id        text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS recipients (
    id               bigserial PRIMARY KEY,
    email            text,
    first_name       text,
    last_name        text,
    company          text,
    job_title        text,
    phone            text,
    mobile_phone     text,
    birth_date       date,
    street           text,
    city             text,
    zip_code         text,
    state            text,
    country_code     text,
    language         text,
    email_opt_out    boolean NOT NULL DEFAULT false,
    blacklisted      boolean NOT NULL DEFAULT false,
    organisation_id  bigint REFERENCES organisations(id) ON DELETE SET NULL,
    crm_account      text,
    crm_id           text,
    deleted          boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS purchases (
    id               bigserial PRIMARY KEY,
    product          text NOT NULL,
    amount           numeric(14, 2),
    currency         char(3) NOT NULL DEFAULT 'EUR',
    purchase_date    date,
    stage            text,
    recipient_id     bigint REFERENCES recipients(id) ON DELETE SET NULL,
    organisation_id  bigint REFERENCES organisations(id) ON DELETE SET NULL,
    crm_account      text,
    crm_id           text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS enumerations (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    label       text NOT NULL,
    open        boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS enumeration_values (
    id              bigserial PRIMARY KEY,
    enumeration_id  bigint NOT NULL REFERENCES enumerations(id) ON DELETE CASCADE,
    name            text NOT NULL,
    label           text NOT NULL,
    value           text NOT NULL,
    position        integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (enumeration_id, name)
);

CREATE INDEX IF NOT EXISTS recipients_email_key ON recipients (lower(btrim(email)));
CREATE UNIQUE INDEX IF NOT EXISTS recipients_crm_link ON recipients (crm_account, crm_id) WHERE crm_id IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS organisations_crm_link ON organisations (crm_account, crm_id) WHERE crm_id IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS purchases_crm_link ON purchases (crm_account, crm_id) WHERE crm_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS purchases_recipient ON purchases (recipient_id);
CREATE INDEX IF NOT EXISTS recipients_organisation ON recipients (organisation_id);

-- updated_at is the Campaign side's modification stamp (conflict policy and drift repair compare it).
CREATE OR REPLACE FUNCTION crmsync_touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
        NEW.updated_at := clock_timestamp();
    END IF;
    RETURN NEW;
END $$;

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['organisations', 'recipients', 'purchases', 'enumerations', 'enumeration_values'] LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS touch_updated_at ON %I', t);
        EXECUTE format('CREATE TRIGGER touch_updated_at BEFORE UPDATE ON %I
                        FOR EACH ROW EXECUTE FUNCTION crmsync_touch_updated_at()', t);
        EXECUTE format('ALTER TABLE %I REPLICA IDENTITY FULL', t);
    END LOOP;
END $$;
