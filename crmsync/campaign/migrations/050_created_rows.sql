-- Every Campaign row the Campaign writer created for a CRM record (a `create` command: the key allocated by the
-- streams). Keys come from sequences and are never handed out twice, so a (table, key) here that has no row any
-- more was deleted after we created it — by a user, whose delete is a change of its own — and a create of it again
-- must not bring it back: a replay of the create (the writer killed after applying its batch, before committing its
-- offsets) or a drift repair that cannot tell a lost insert from a lost delete. Kept for the life of the rows'
-- links (about 50 bytes a row).
CREATE TABLE IF NOT EXISTS crmsync.created_rows (
    campaign_table text NOT NULL,
    campaign_key   bigint NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (campaign_table, campaign_key)
);
