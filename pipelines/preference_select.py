"""Default preference selection: drop pairs whose chosen answer fails the
rule-based quality checks, then pick `budget` pairs.

The quality scorer judges the chosen answer of each pair (empty, refusal,
truncated, repeated n-grams or lines); a seeded random sample of the
surviving pairs up to the budget is selected.
"""

from curate import Param, pipeline, read


@pipeline(
    budget=Param(1000, "pairs to select; larger than the pool keeps every pair that passes"),
    seed=Param(0, "seed of the random selection"),
    tokenizer=Param("smollm2-135m", "target model whose tokenizer counts tokens"),
    max_ngram_repetition=Param(0.3, "max share of repeated word 3-grams in the chosen answer"),
    max_line_repetition=Param(0.3, "max share of duplicated lines in the chosen answer"),
    drop_truncated=Param(True, "drop pairs whose chosen answer looks cut off"),
)
def preference_select(budget, seed, tokenizer, max_ngram_repetition, max_line_repetition,
                      drop_truncated):
    p = (read(kind="preference")
         .score("text_stats", tokenizer=tokenizer)
         .score("quality")
         .filter("not quality_empty_response", name="empty chosen answer")
         .filter("not quality_refusal", name="refusal in chosen answer"))
    if drop_truncated:
        p = p.filter("not quality_truncated", name="truncated chosen answer")
    return (p
            .filter(f"quality_ngram_repetition <= {max_ngram_repetition}", name="repeated n-grams")
            .filter(f"quality_line_repetition <= {max_line_repetition}", name="repeated lines")
            .select("random", budget=budget, seed=seed))


pipeline = preference_select
