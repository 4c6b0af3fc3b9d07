"""Default SFT selection for a target model.

0. KTO-style data (a true/false `label` per answer): answers labelled false
   (undesirable) are never selected unless `keep_undesirable` is set.

1. Token and length statistics under the target model's tokenizer.
2. Rule-based quality checks on the answer: empty, refusal boilerplate, cut off
   mid-sentence, repeated n-grams or lines, mostly symbols.
3. Exact duplicates (normalised text), then near-duplicates (MinHash-LSH,
   Jaccard >= 0.8 of word 5-grams, verified).
4. Relevance: cosine similarity of the answer to its prompt (minilm); answers to
   another question score far lower.
5. IFD under the target model (perplexity of the answer with and without the
   prompt): IFD >= 1 means the prompt does not help predict the answer.
6. Deita-style diversity-aware selection under the budget: walk rows from the
   most informative (`rank_by`, longest answers by default) and keep a row only
   if its cosine similarity to every kept row is at most `max_similarity`.
"""

from curate import Param, pipeline, read


@pipeline(
    budget=Param(1000, "rows to select, or a token budget such as '200000tokens'"),
    keep_undesirable=Param(False, "keep answers a KTO-style label marks undesirable (label false)"),
    model=Param("smollm2-135m", "target model: tokenizer for token counts, LM for IFD"),
    max_ngram_repetition=Param(0.3, "max share of repeated word 3-grams in the answer"),
    max_line_repetition=Param(0.3, "max share of duplicated lines in the answer"),
    max_non_alnum_ratio=Param(0.5, "max share of symbols among non-space characters of the answer"),
    drop_refusals=Param(True, "drop answers with refusal boilerplate ('As an AI language model')"),
    drop_truncated=Param(True, "drop answers that look cut off mid-sentence"),
    near_dup_threshold=Param(0.8, "Jaccard similarity of word 5-grams that makes a near-duplicate"),
    min_relevance=Param(0.25, "min cosine of answer to prompt (real pairs: 98% above; "
                              "answers to other questions: 98% below)"),
    use_ifd=Param(True, "score IFD under the target model (CPU: ~350 tokens/s with the "
                        "embedded 135M model) and drop rows with IFD >= max_ifd"),
    max_ifd=Param(1.0, "max IFD (Cherry LLM): at 1 the prompt no longer helps the answer"),
    ifd_max_length=Param(1024, "tokens of a row scored for IFD (longer rows are cut and flagged)"),
    rank_by=Param("text_stats_response_words", "score the selection walks from (highest first)"),
    max_similarity=Param(0.9, "max cosine between two selected rows (Deita)"),
)
def sft_select(budget, keep_undesirable, model, max_ngram_repetition, max_line_repetition, max_non_alnum_ratio,
               drop_refusals, drop_truncated, near_dup_threshold, min_relevance, use_ifd, max_ifd,
               ifd_max_length, rank_by, max_similarity):
    p = read(kind="sft")
    if not keep_undesirable:
        p = p.filter("label IS NULL OR label", name="labelled undesirable (KTO label false)")
    p = (p.score("text_stats", tokenizer=model)
         .score("quality")
         .filter("not quality_empty_response", name="empty response"))
    if drop_refusals:
        p = p.filter("not quality_refusal", name="refusal")
    if drop_truncated:
        p = p.filter("not quality_truncated", name="truncated response")
    p = (p.filter(f"quality_ngram_repetition <= {max_ngram_repetition}", name="repeated n-grams")
         .filter(f"quality_line_repetition <= {max_line_repetition}", name="repeated lines")
         .filter(f"quality_non_alnum_ratio <= {max_non_alnum_ratio}", name="mostly symbols")
         .dedup("exact")
         .dedup("minhash", threshold=near_dup_threshold)
         .score("relevance")
         .filter(f"relevance >= {min_relevance}", name="answer unrelated to the prompt"))
    if use_ifd:
        p = (p.score("perplexity", model=model, max_length=ifd_max_length)
             .filter(f"ifd < {max_ifd}", name="prompt does not help the answer (IFD)"))
    return p.select("deita", by=rank_by, threshold=max_similarity, budget=budget)


pipeline = sft_select
