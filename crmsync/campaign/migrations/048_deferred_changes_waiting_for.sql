-- A change deferred because a record it points at (its parent) is not in the CRM yet names those parents
-- ('<parent mapping>:<Campaign key>'): the batch that links a parent to its CRM record makes its waiting children
-- due at once, instead of leaving them to their backoff (2, 4, 8, then every 10 s). The backoff stays the safety net.
-- A table with a btree, not an array column: a batch links thousands of parents at once, and an array overlap
-- with thousands of elements is compared row by row (measured: ~110 ms per batch at 20,000 deferred changes).
CREATE TABLE IF NOT EXISTS crmsync.deferred_parents (
    parent     text NOT NULL,
    change_id  text NOT NULL REFERENCES crmsync.deferred_changes (id) ON DELETE CASCADE,
    PRIMARY KEY (parent, change_id)
);
CREATE INDEX IF NOT EXISTS deferred_parents_change ON crmsync.deferred_parents (change_id);
