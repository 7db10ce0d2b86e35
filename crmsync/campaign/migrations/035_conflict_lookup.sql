-- A decision replayed (a change that had to wait for its parent comes back, a batch replayed after a crash)
-- must not record the same conflict twice: the streams look for it first, by record and field.
CREATE INDEX IF NOT EXISTS conflicts_by_record ON crmsync.conflicts (mapping, crm_id, field);
