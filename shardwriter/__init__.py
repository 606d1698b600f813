"""Rolling WebDataset tar shards, the atomic part commit, retention/GC and shard verification."""
