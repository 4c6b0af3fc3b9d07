"""Task-specific selection by SAE features of the target model.

1. Token counts under the target model's tokenizer (for token budgets).
2. Exact duplicates removed.
3. SAE features of each row (the residual stream of the SAE's layer, mean-pooled
   over the row's tokens) and their generalised Jaccard similarity to the
   prototype of the `target` rows.
4. `sae_target`: the rows most similar to the target task, under the budget; or
   `sae_coverage` (`strategy=sae_coverage`): the rows covering the most distinct
   features (each feature counted at most `cap` times).

Train an SAE first: curate sae train --layer 21 --input DATA --output SAE_DIR
"""

from curate import Param, pipeline, read


@pipeline(
    sae=Param("", "SAE folder (curate sae train, or a SAELens / sparsify folder)"),
    target=Param("", "example rows of the target task (needed by sae_target)"),
    budget=Param(1000, "rows to select, or a token budget such as '200000tokens'"),
    strategy=Param("sae_target", "sae_target or sae_coverage"),
    cap=Param(1, "sae_coverage: times a feature may count toward coverage"),
    model=Param("smollm2-135m", "target model (the SAE must be trained on it)"),
    max_length=Param(512, "tokens of a row read by the model"),
)
def sae_select(sae, target, budget, strategy, cap, model, max_length):
    p = (read(kind="sft")
         .score("text_stats", tokenizer=model)
         .dedup("exact")
         .score("sae", sae=sae, target=target or None, model=model, max_length=max_length))
    if strategy == "sae_coverage":
        return p.select("sae_coverage", cap=cap, budget=budget)
    return p.select(strategy, budget=budget)


pipeline = sae_select
