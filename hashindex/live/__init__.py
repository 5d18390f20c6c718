"""Live indexes: the commit log, immutable snapshots, additions and removals, compaction."""
