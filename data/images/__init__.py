"""Images: safe decoding of untrusted bytes with pixel limits, where a record's image lives, near-duplicates."""
