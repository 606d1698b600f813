"""What services hand each other: the records on the bus, the heartbeat records, the shard
file format, and the JSON Lines files people give them."""
