"""The per-node cache actor, its storage engine, and the coordinator of a cache's members."""
