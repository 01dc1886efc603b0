-- A conversation's context hash belongs to one key set and one instance, but the planner multiplies the selectivities
-- of `key_set_id = ?`, `instance_id = ?` and `context_hash = ANY(?)` as if they were independent. For a key set whose
-- context holds 10,000 entries in a million-row table it then expects about 100 rows, scans them all and sorts by
-- distance instead of walking the HNSW index. Functional-dependency and n-distinct statistics on the three columns
-- give it the real count.
CREATE STATISTICS IF NOT EXISTS cache_entries_scope (dependencies, ndistinct)
    ON key_set_id, instance_id, context_hash FROM cache_entries;
ANALYZE cache_entries;
