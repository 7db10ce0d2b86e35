-- The stream processors' state per synced record: the identity link (CRM id ⇄ Campaign key) and the
-- "agreed" values both sides converge to, with per-field provenance and in-flight writes. Three-way merge
-- against `agreed` is what lets the streams tell a real edit from an echo of their own write, and detect
-- conflicting edits on both sides (see docs/two-way-sync.md).
CREATE TABLE IF NOT EXISTS crmsync.sync_state (
    id                 bigserial PRIMARY KEY,
    mapping            text NOT NULL,
    crm_id             text,
    campaign_key       bigint,
    match_key          text,
    agreed             jsonb NOT NULL DEFAULT '{}',
    field_meta         jsonb NOT NULL DEFAULT '{}',   -- field -> [side, epoch seconds of the edit]
    pending            jsonb NOT NULL DEFAULT '{}',   -- side -> field -> {"base": v, "sent": [v, ...], "at": t}
    crm_modstamp       text,
    campaign_lsn       bigint,
    campaign_seq       integer,
    deleted            boolean NOT NULL DEFAULT false,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (mapping, crm_id),
    UNIQUE (mapping, campaign_key)
);
CREATE INDEX IF NOT EXISTS sync_state_match ON crmsync.sync_state (mapping, match_key) WHERE match_key IS NOT NULL;

-- Changes the streams cannot process yet (a parent not in the CRM yet, the CRM backfill still running):
-- they wait here and are re-published to their change topic with backoff, never dropped.
CREATE TABLE IF NOT EXISTS crmsync.deferred_changes (
    id             text PRIMARY KEY,
    topic          text NOT NULL,
    message_key    bytea,
    payload        bytea NOT NULL,
    reason         text NOT NULL,
    attempts       integer NOT NULL DEFAULT 0,
    next_retry_at  timestamptz NOT NULL DEFAULT now(),
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS deferred_changes_due ON crmsync.deferred_changes (next_retry_at);
