"""Vocabulary stage: tag canonicalisation, exact counting, WordNet synsets, vocab.json and its report (docs/vocabulary.md)."""
