"""``curate sae``: train, inspect and describe sparse autoencoders."""

from __future__ import annotations

import json
from typing import Any

import click


@click.group("sae")
def sae_group() -> None:
    """Sparse autoencoders on the target model's residual stream (for the sae scorer).

    \b
      curate sae train --layer 21 --input DATA --output SAE_DIR
      curate sae info SAE_DIR
      curate sae features SAE_DIR --data DATA --top 10
    """


@sae_group.command("train")
@click.option("--model", default="smollm2-135m", show_default=True,
              help="Target model: an embedded name or a local transformers folder.")
@click.option("--layer", type=int, default=None,
              help="Decoder layer whose output (residual stream) the SAE reads "
                   "[default: 21, measured best for smollm2-135m].")
@click.option("--input", "input_", required=True, type=click.Path(), help="Data to train on.")
@click.option("--output", "-o", required=True, type=click.Path(), help="SAE folder to write.")
@click.option("--width", type=click.IntRange(1), default=None,
              help="Features [default: --expansion x the hidden size].")
@click.option("--expansion", type=click.IntRange(1), default=8, show_default=True)
@click.option("--k", type=click.IntRange(1), default=32, show_default=True,
              help="Active features per token (TopK).")
@click.option("--steps", type=click.IntRange(1), default=2000, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=1024, show_default=True,
              help="Tokens per step.")
@click.option("--lr", type=float, default=None, help="Adam learning rate [default: by width].")
@click.option("--max-rows", type=click.IntRange(1), default=None, help="Rows of --input to use.")
@click.option("--max-tokens", type=click.IntRange(1), default=500_000, show_default=True,
              help="Activations held in memory at most.")
@click.option("--max-length", type=click.IntRange(2), default=512, show_default=True,
              help="Tokens per row.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default=None, help="cpu, cuda, cuda:1 [default: cuda if available].")
@click.option("--overwrite", is_flag=True, help="Replace an existing SAE folder.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
def train_cmd(model: str, layer: int | None, input_: str, output: str, overwrite: bool,
              quiet: bool, **kw: Any) -> None:
    """Train a TopK SAE on MODEL's residual stream after LAYER over --input's rows, and
    save it in the SAELens layout (cfg.json + sae_weights.safetensors)."""
    from pathlib import Path

    from curate.errors import CurateError
    from curate.progress import Log
    from curate.readers import existing_path
    from curate.sae_train import DEFAULT_LAYER, TrainConfig, train

    existing_path(input_, "input")
    if Path(output).exists() and any(Path(output).iterdir()) and not overwrite:
        raise CurateError(f"{output} exists; pass --overwrite to replace it")
    cfg = TrainConfig(model=model, layer=DEFAULT_LAYER if layer is None else layer, **kw)
    log = Log(quiet)
    result = train(input_, output, cfg, log)
    log.info(f"SAE: {result['d_in']} -> {result['d_sae']} features, k={result['k']}, layer "
             f"{result['layer']}; held-out FVU {result['fvu']:.3f} on {result['heldout_tokens']:,} "
             f"tokens; dead features {result['dead_share']:.1%}")
    click.echo(result["output"])


@sae_group.command("info")
@click.argument("sae_dir", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info_cmd(sae_dir: str, as_json: bool) -> None:
    """Print an SAE folder's shape, model, layer, k, FVU and dead share."""
    from curate.sae import load_sae

    d = load_sae(sae_dir).describe()
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    for key, label in [("path", "path"), ("layout", "layout"), ("architecture", "architecture"),
                       ("d_in", "input width"), ("d_sae", "features"), ("k", "k"),
                       ("model", "model"), ("hook_name", "hook"), ("layer", "layer"),
                       ("fvu", "FVU (held out)"), ("dead_share", "dead share"),
                       ("fingerprint", "fingerprint")]:
        v = d.get(key)
        if isinstance(v, float):
            v = f"{v:.1%}" if key == "dead_share" else f"{v:.4f}"
        click.echo(f"{label:<16} {'-' if v is None else v}")


@sae_group.command("features")
@click.argument("sae_dir", type=click.Path())
@click.option("--data", required=True, type=click.Path(), help="Rows to look at.")
@click.option("--top", type=click.IntRange(1), default=10, show_default=True,
              help="How many of the most active features.")
@click.option("--examples", type=click.IntRange(1), default=3, show_default=True,
              help="Rows shown per feature.")
@click.option("--model", default="smollm2-135m", show_default=True)
@click.option("--layer", type=int, default=None, help="[default: the SAE's layer]")
@click.option("--max-rows", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--max-length", type=click.IntRange(2), default=512, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def features_cmd(sae_dir: str, data: str, top: int, examples: int, model: str,
                 layer: int | None, max_rows: int, max_length: int, as_json: bool) -> None:
    """List the most active features over --data, with the rows and the tokens (in
    [[brackets]], with some context) that fire each most."""
    from curate.readers import existing_path
    from curate.sae_inspect import top_features

    existing_path(data, "data")
    feats = top_features(sae_dir, data, top=top, examples=examples, model=model, layer=layer,
                         max_rows=max_rows, max_length=max_length)
    if as_json:
        click.echo(json.dumps(feats, indent=2, ensure_ascii=False))
        return
    for f in feats:
        click.echo(f"feature {f['feature']}: total activation {f['total_activation']:.1f}, "
                   f"fires on {f['tokens_fired']:,} tokens")
        for e in f["examples"]:
            ctx = " ".join(e["context"].split())
            click.echo(f"  {e['value']:8.3f}  row {e['id']}  {ctx}")
