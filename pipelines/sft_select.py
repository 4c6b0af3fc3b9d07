"""Default SFT selection: drop rows that rule-based quality checks flag, then
pick `budget` rows.

Steps: token/length statistics under the target model's tokenizer; quality
heuristics on the answer (empty, refusal boilerplate, truncated, repeated
n-grams or lines, symbol soup); a seeded random sample of the survivors up to
the budget.
"""

from curate import Param, pipeline, read


@pipeline(
    budget=Param(1000, "rows to select; larger than the pool keeps every row that passes"),
    seed=Param(0, "seed of the random selection"),
    tokenizer=Param("smollm2-135m", "target model whose tokenizer counts tokens"),
    max_ngram_repetition=Param(0.3, "max share of repeated word 3-grams in the answer"),
    max_line_repetition=Param(0.3, "max share of duplicated lines in the answer"),
    max_non_alnum_ratio=Param(0.5, "max share of symbols among non-space characters of the answer"),
    drop_refusals=Param(True, "drop answers with refusal boilerplate ('As an AI language model')"),
    drop_truncated=Param(True, "drop answers that look cut off mid-sentence"),
)
def sft_select(budget, seed, tokenizer, max_ngram_repetition, max_line_repetition,
               max_non_alnum_ratio, drop_refusals, drop_truncated):
    p = (read(kind="sft")
         .score("text_stats", tokenizer=tokenizer)
         .score("quality")
         .filter("not quality_empty_response", name="empty response"))
    if drop_refusals:
        p = p.filter("not quality_refusal", name="refusal")
    if drop_truncated:
        p = p.filter("not quality_truncated", name="truncated response")
    return (p
            .filter(f"quality_ngram_repetition <= {max_ngram_repetition}", name="repeated n-grams")
            .filter(f"quality_line_repetition <= {max_line_repetition}", name="repeated lines")
            .filter(f"quality_non_alnum_ratio <= {max_non_alnum_ratio}", name="mostly symbols")
            .select("random", budget=budget, seed=seed))


pipeline = sft_select
