"""Default preference selection.

1. Rule-based quality checks on the chosen answer (empty, refusal, cut off,
   repeated n-grams or lines).
2. Pairs that teach nothing: chosen and rejected identical, or nearly so
   (embedding cosine above `max_pair_cosine`).
3. Optional margin under the target model: the log-likelihood margin between
   chosen and rejected (`use_margin`); pairs with |margin| below `min_margin`
   are near-ties for the model.
4. Exact and near-duplicate pairs removed.
5. Deita-style diversity-aware selection of pairs under the budget.
"""

from curate import Param, pipeline, read


@pipeline(
    budget=Param(1000, "pairs to select, or a token budget such as '200000tokens'"),
    model=Param("smollm2-135m", "target model: tokenizer for token counts, LM for the margin"),
    max_ngram_repetition=Param(0.3, "max share of repeated word 3-grams in the chosen answer"),
    max_line_repetition=Param(0.3, "max share of duplicated lines in the chosen answer"),
    drop_truncated=Param(True, "drop pairs whose chosen answer looks cut off"),
    max_pair_cosine=Param(0.97, "max cosine between chosen and rejected answers"),
    use_margin=Param(False, "score the target model's log-likelihood margin (slow on CPU)"),
    min_margin=Param(0.05, "with use_margin: min |mean log-prob(chosen) - mean log-prob(rejected)|"),
    near_dup_threshold=Param(0.8, "Jaccard similarity of word 5-grams that makes a near-duplicate pair"),
    rank_by=Param("text_stats_response_words", "score the selection walks from (highest first)"),
    max_similarity=Param(0.9, "max cosine between two selected pairs (Deita)"),
)
def preference_select(budget, model, max_ngram_repetition, max_line_repetition, drop_truncated,
                      max_pair_cosine, use_margin, min_margin, near_dup_threshold, rank_by,
                      max_similarity):
    p = (read(kind="preference")
         .score("text_stats", tokenizer=model)
         .score("quality")
         .filter("not quality_empty_response", name="empty chosen answer")
         .filter("not quality_refusal", name="refusal in chosen answer"))
    if drop_truncated:
        p = p.filter("not quality_truncated", name="truncated chosen answer")
    p = (p.filter(f"quality_ngram_repetition <= {max_ngram_repetition}", name="repeated n-grams")
         .filter(f"quality_line_repetition <= {max_line_repetition}", name="repeated lines")
         .score("pair_similarity")
         .filter("not pair_identical", name="chosen equals rejected")
         .filter(f"pair_cosine <= {max_pair_cosine}", name="chosen and rejected nearly identical"))
    if use_margin:
        p = (p.score("perplexity", model=model)
             .filter(f"abs(logprob_margin) >= {min_margin}", name="near-tie under the target model"))
    p = p.dedup("exact").dedup("minhash", threshold=near_dup_threshold)
    return p.select("deita", by=rank_by, threshold=max_similarity, budget=budget)


pipeline = preference_select
