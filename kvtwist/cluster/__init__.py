"""A cluster of many chains: the shard map, placement, and routing by key."""
