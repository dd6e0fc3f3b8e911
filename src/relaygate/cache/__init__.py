"""The response cache: exact-match keys, memory, Redis and database tiers, replay."""
