-- Workflows (docs/workflows.md): one row per run of a workflow file, and the export journal that makes a CRM
-- export restart-safe. A run that did not finish is resumed by the next `crmsync workflow run` of the same
-- workflow: records already exported are skipped, records sent without a recorded answer are upserted again by
-- their external id (idempotent), so a crash neither loses nor doubles a record.

CREATE TABLE IF NOT EXISTS crmsync.workflow_runs (
    id           bigserial PRIMARY KEY,
    workflow     text NOT NULL,
    file         text,
    status       text NOT NULL DEFAULT 'running',   -- running | succeeded | failed
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);
CREATE INDEX IF NOT EXISTS workflow_runs_open ON crmsync.workflow_runs (workflow, id) WHERE status <> 'succeeded';

CREATE TABLE IF NOT EXISTS crmsync.workflow_journal (
    run_id         bigint NOT NULL REFERENCES crmsync.workflow_runs(id) ON DELETE CASCADE,
    activity       text NOT NULL,
    record_key     text NOT NULL,                  -- the Campaign key (the external id sent to the CRM)
    state          text NOT NULL,                  -- sent | done | rejected
    crm_id         text,
    created        boolean,
    error_code     text,
    error_message  text,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, activity, record_key)
);

-- CRM users imported by workflows (the seed's "incremental user import" into operators).
CREATE TABLE IF NOT EXISTS operators (
    id           bigserial PRIMARY KEY,
    username     text,
    name         text,
    email        text,
    active       boolean,
    folder       text,
    crm_account  text,
    crm_id       text,
    crm_modified_at timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS operators_crm_link ON operators (crm_account, crm_id) WHERE crm_id IS NOT NULL;

-- Leads to export (the seed's scheduled lead export with write-back of the CRM id and status).
CREATE TABLE IF NOT EXISTS leads (
    id            bigserial PRIMARY KEY,
    first_name    text,
    last_name     text NOT NULL,
    company       text NOT NULL,
    email         text,
    country       text,
    send_to_crm   boolean NOT NULL DEFAULT false,
    crm_status    text,
    crm_account   text,
    crm_id        text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS leads_crm_link ON leads (crm_account, crm_id) WHERE crm_id IS NOT NULL;
