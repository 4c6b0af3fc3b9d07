"""Scorer families. Importing this package registers every scorer by short name."""

from scorers import contamination, embedding, exact, minhash, perplexity, quality, text_stats  # noqa: F401
