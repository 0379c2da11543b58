"""Streaming loader: shard order, tar reading, hashtag resampling, transforms, batches, skip counting (docs/loader.md)."""
