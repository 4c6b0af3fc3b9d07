"""Scorer families. Importing this package registers every scorer by short name."""

from scorers import (  # noqa: F401
    contamination,
    dsir,
    embedding,
    exact,
    lexical,
    minhash,
    perplexity,
    quality,
    sae,
    similarity,
    text_stats,
)
