"""openwsl data stage: corpus readers, hashtag vocabulary, shards and the streaming loader.

Imports nothing from ``pretrain`` or ``transfer`` (see docs/design.md).
"""
