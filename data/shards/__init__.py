"""Shard stage: planning, building and the shard-directory format (info.json, splits) (docs/shards.md)."""
