-- crmsync's own state, in schema crmsync: identity links, checkpoints, rejects, conflicts, heartbeat.

CREATE TABLE IF NOT EXISTS crmsync.identity_links (
    crm_account    text NOT NULL,
    crm_object     text NOT NULL,
    crm_id         text NOT NULL,
    campaign_table text NOT NULL,
    campaign_key   bigint NOT NULL,
    linked_by      text NOT NULL DEFAULT 'sync',   -- sync | match | workflow | repair
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (crm_account, crm_object, crm_id),
    UNIQUE (crm_account, campaign_table, campaign_key)
);

-- Poller cursors and other resumable positions, written only after the broker acknowledged what they cover.
CREATE TABLE IF NOT EXISTS crmsync.checkpoints (
    name        text PRIMARY KEY,
    position    jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS crmsync.rejects (
    id           text PRIMARY KEY,
    stage        text NOT NULL,
    side         text NOT NULL,
    target       text NOT NULL,
    object       text NOT NULL,
    reason       text NOT NULL,
    error_code   text,
    record       jsonb NOT NULL,
    attempts     integer NOT NULL DEFAULT 0,
    status       text NOT NULL DEFAULT 'pending',   -- pending | retrying | resolved | abandoned
    next_retry_at timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS rejects_status ON crmsync.rejects (status, next_retry_at);

CREATE TABLE IF NOT EXISTS crmsync.conflicts (
    id              bigserial PRIMARY KEY,
    mapping         text NOT NULL,
    crm_id          text,
    campaign_key    bigint,
    field           text NOT NULL,
    crm_value       jsonb,
    campaign_value  jsonb,
    crm_ts          timestamptz,
    campaign_ts     timestamptz,
    decision        text NOT NULL,
    policy          text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- Written by change capture on a quiet database so the replication slot keeps advancing.
CREATE TABLE IF NOT EXISTS crmsync.heartbeat (
    id       integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    beat_at  timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE crmsync.heartbeat REPLICA IDENTITY FULL;

-- Named options such as workflow watermarks (LASTIMPORT_<account>_<activity>).
CREATE TABLE IF NOT EXISTS crmsync.options (
    name        text PRIMARY KEY,
    value       text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
