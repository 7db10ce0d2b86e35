-- A deferred change remembers the partition of its change topic it came from: the streams worker that owns that
-- partition decides it again from this table when it is due, so it is never published a second time on the
-- change topic (subscribers read each record version once). Rows from before this column (NULL) are put back on
-- their topic once, as before, and come back with their partition.
ALTER TABLE crmsync.deferred_changes ADD COLUMN IF NOT EXISTS kafka_partition integer;
CREATE INDEX IF NOT EXISTS deferred_changes_owner ON crmsync.deferred_changes (topic, kafka_partition, next_retry_at);
