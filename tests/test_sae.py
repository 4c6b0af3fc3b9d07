"""SAE training, loading (curate / SAELens 6 / sparsify layouts), the sae scorer, the
sae_target and sae_coverage strategies, the report section and bad inputs, on real
rows (GPTeacher role-play and Alpaca-style instructions) with the embedded model.

One small SAE (layer 3, 1152 features, k=16, 200 steps on ~240 rows cut to 64 tokens)
is trained once for the module through the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from conftest import DATA, SAMPLE_SFT, cli, curate_cli

LAYER = 3
TRAIN = ["--layer", str(LAYER), "--width", "1152", "--k", "16", "--steps", "200",
         "--batch-size", "256", "--max-length", "64", "-q"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """train (role-play + Alpaca-style), pool (30 + 30, with the task) and target (8
    role-play rows outside the pool), plus an empty target file."""
    d = tmp_path_factory.mktemp("sae_data")
    rp = pl.read_parquet(DATA / "gpteacher" / "roleplay_rest.parquet")
    al = pl.read_parquet(DATA / "llamafactory" / "alpaca_en_demo.parquet")
    cols = ["instruction", "input", "output"]
    pl.concat([rp[200:320].select(cols), al[200:320].select(cols)]).sample(
        fraction=1.0, shuffle=True, seed=0).write_parquet(d / "train.parquet")
    pl.concat([rp[:30].select(cols).with_columns(task=pl.lit("roleplay")),
               al[:30].select(cols).with_columns(task=pl.lit("general"))]).sample(
        fraction=1.0, shuffle=True, seed=0).write_parquet(d / "pool.parquet")
    rp[-8:].select(cols).write_parquet(d / "target.parquet")
    rp[:0].select(cols).write_parquet(d / "empty.parquet")
    return {"train": d / "train.parquet", "pool": d / "pool.parquet",
            "target": d / "target.parquet", "empty": d / "empty.parquet", "dir": d}


@pytest.fixture(scope="module")
def sae_dir(data: dict[str, Path]) -> Path:
    out = data["dir"] / "sae"
    curate_cli("sae", "train", "--input", data["train"], "--output", out, *TRAIN)
    return out


@pytest.fixture(scope="module")
def scored(data: dict[str, Path], sae_dir: Path):
    """The pool scored with text_stats and sae (target set), as a run."""
    from curate import read

    return (read(str(data["pool"])).score("text_stats", tokenizer="smollm2-135m")
            .score("sae", sae=str(sae_dir), target=str(data["target"]), max_length=64)
            .write(str(data["dir"] / "run"), quiet=True, cache_dir=str(data["dir"] / "cache")))


def _frame(run) -> pl.DataFrame:
    return pl.from_arrow(run.table("scores")).with_columns(pl.col("id").cast(pl.String))


# --- training and files --------------------------------------------------------------------

def test_train_writes_saelens_layout_with_fvu_and_dead_share(sae_dir: Path) -> None:
    from safetensors.torch import load_file

    cfg = json.loads((sae_dir / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["k"] == 16
    assert cfg["d_in"] == 576 and cfg["d_sae"] == 1152
    assert cfg["metadata"]["hook_name"] == f"blocks.{LAYER}.hook_resid_post"
    assert cfg["metadata"]["model_name"] == "smollm2-135m"
    cur = cfg["curate"]
    assert cur["heldout_tokens"] > 500 and cur["train_tokens"] > 5000
    assert 0 < cur["fvu"] < 0.35  # held-out FVU well below 1 (measured ~0.1-0.2)
    assert 0 <= cur["dead_share"] < 0.5
    w = load_file(str(sae_dir / "sae_weights.safetensors"))
    assert tuple(w["W_enc"].shape) == (576, 1152) and tuple(w["W_dec"].shape) == (1152, 576)
    assert np.allclose(w["W_dec"].norm(dim=1).numpy(), 1.0, atol=1e-4)  # unit-norm decoder
    info = curate_cli("sae", "info", sae_dir).stdout
    assert f"FVU (held out)   {cur['fvu']:.4f}" in info and "layer            3" in info
    assert "dead share" in info


def test_loads_saelens6_and_sparsify_layouts(sae_dir: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    from curate.sae import load_sae

    ours = load_sae(sae_dir)
    w = load_file(str(sae_dir / "sae_weights.safetensors"))
    lens = tmp_path / "saelens6"
    lens.mkdir()
    save_file(w, str(lens / "sae_weights.safetensors"))  # SAELens 6: hook under metadata only
    (lens / "cfg.json").write_text(json.dumps({
        "architecture": "topk", "d_in": 576, "d_sae": 1152, "k": 16, "dtype": "float32",
        "apply_b_dec_to_input": True, "metadata": {"model_name": "smollm2-135m",
                                                   "hook_name": "blocks.3.hook_resid_post"}}))
    sp = tmp_path / "sparsify" / "layers.3"
    sp.mkdir(parents=True)
    save_file({"encoder.weight": w["W_enc"].T.contiguous(), "encoder.bias": w["b_enc"],
               "W_dec": w["W_dec"], "b_dec": w["b_dec"]}, str(sp / "sae.safetensors"))
    (sp / "cfg.json").write_text(json.dumps({"expansion_factor": 2, "normalize_decoder": True,
                                             "num_latents": 1152, "k": 16, "d_in": 576}))
    x = torch.randn(50, 576) * 3
    for other in (load_sae(lens), load_sae(sp)):
        assert other.layer == 3 and other.k == 16 and other.d_sae == 1152
        assert torch.allclose(other.encode(x), ours.encode(x), atol=1e-5)
    assert load_sae(sp).layout == "sparsify"
    # the sparsify run folder (hookpoints below it) is named in the error
    proc = cli("sae", "info", tmp_path / "sparsify")
    assert proc.returncode == 2 and "pass one of them" in proc.stderr and "layers.3" in proc.stderr


# --- scorer and strategies -------------------------------------------------------------------

def test_scorer_columns_and_target_separation(scored) -> None:
    f = _frame(scored)
    assert f.height == 60 and f["sae_target_similarity"].null_count() == 0
    sims = f["sae_target_similarity"].to_numpy()
    assert ((sims > 0) & (sims < 1)).all()
    assert (f["sae_feature_ids"].list.len() == 64).all()  # top features, stored compactly
    vals = f["sae_feature_values"].to_list()
    assert all(v[0] >= v[-1] > 0 for v in vals)  # sorted, positive
    assert (f["sae_active"] >= 64).all()
    pool = pl.from_arrow(scored.table("selected", columns=["id", "task"])).with_columns(
        pl.col("id").cast(pl.String))
    ranked = f.join(pool, on="id").sort("sae_target_similarity", descending=True)
    top = ranked.head(12)  # top 20%
    assert (top["task"] == "roleplay").mean() >= 0.8
    man = json.loads((scored.path / "manifest.json").read_text())
    setup = man["scorers"]["sae"]["setup"]
    assert setup["fvu"] is not None and setup["dead_share"] is not None and setup["layer"] == 3


def test_cache_is_keyed_by_sae_fingerprint(scored, data: dict[str, Path], sae_dir: Path,
                                           tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from curate import read
    from curate.scorer import get_scorer

    moved = tmp_path / "moved"
    shutil.copytree(sae_dir, moved)  # same files elsewhere: same scores, from the cache
    run = (read(str(data["pool"])).score("sae", sae=str(moved), target=str(data["target"]),
                                         max_length=64)
           .write(str(tmp_path / "run"), quiet=True, cache_dir=str(data["dir"] / "cache")))
    assert json.loads((run.path / "manifest.json").read_text())["scorers"]["sae"]["from_cache"] == 60
    w = load_file(str(moved / "sae_weights.safetensors"))
    w["b_enc"] = w["b_enc"] + 0.01
    save_file(w, str(moved / "sae_weights.safetensors"))
    a = get_scorer("sae", sae=str(sae_dir), target=str(data["target"]), max_length=64)
    b = get_scorer("sae", sae=str(moved), target=str(data["target"]), max_length=64)
    assert a.cache_key() != b.cache_key()


def _distinct(f: pl.DataFrame, keep: pl.Series) -> int:
    return len({x for lst in f.filter(keep)["sae_feature_ids"].to_list() for x in lst})


def test_coverage_beats_random_and_target(scored) -> None:
    from curate.selection import select

    f = _frame(scored)
    cov = select(f, "sae_coverage", 10, {}).keep
    covered = _distinct(f, cov)
    assert covered > _distinct(f, select(f, "sae_target", 10, {}).keep)
    for seed in range(3):
        assert covered > _distinct(f, select(f, "random", 10, {"seed": seed}).keep)
    assert cov.sum() == 10
    capped = select(f, "sae_coverage", 10, {"cap": 3}).keep
    assert capped.sum() == 10


def test_token_budgets(scored) -> None:
    from curate.selection import select

    f = _frame(scored)
    tokens = f["text_stats_tokens"]
    budget = int(tokens.sum() * 0.2)
    for name in ("sae_target", "sae_coverage"):
        d = select(f, name, f"{budget} tokens", {})
        assert 0 < int(tokens.filter(d.keep).sum()) <= budget
        assert d.keep.sum() >= 5


def test_report_shows_feature_coverage(data: dict[str, Path], scored, sae_dir: Path) -> None:
    from curate import read
    from curate.report import write_report

    run = (read(str(data["pool"])).score("sae", sae=str(sae_dir), target=str(data["target"]),
                                         max_length=64)
           .select("sae_coverage", budget=10)
           .write(str(data["dir"] / "run_cov"), quiet=True, cache_dir=str(data["dir"] / "cache")))
    page = write_report(run.path).read_text()
    assert "SAE feature coverage" in page
    f = _frame(run)
    rejected = pl.from_arrow(run.table("rejected", columns=["id"]))["id"].cast(pl.String)
    keep = ~f["id"].is_in(rejected.implode())
    assert f"<td>selected</td><td>10</td><td>{_distinct(f, keep):,}</td>" in page


def test_pipeline_runs_on_sample_data(sae_dir: Path, data: dict[str, Path], tmp_path: Path) -> None:
    curate_cli("run", "pipelines/sae_select.py", "--input", SAMPLE_SFT, "--output",
               tmp_path / "run", "--set", f"sae={sae_dir}", "--set", f"target={data['target']}",
               "--set", "budget=50", "--set", "max_length=32", "-q")
    from curate import open_run

    assert open_run(tmp_path / "run").table("selected", columns=["id"]).num_rows == 50


def test_features_lists_rows_and_tokens(sae_dir: Path, data: dict[str, Path]) -> None:
    out = json.loads(curate_cli("sae", "features", sae_dir, "--data", data["target"], "--top",
                                "3", "--max-length", "64", "--json").stdout)
    assert len(out) == 3
    assert out[0]["total_activation"] >= out[1]["total_activation"] >= out[2]["total_activation"]
    for feat in out:
        assert 1 <= len(feat["examples"]) <= 3 and feat["tokens_fired"] > 0
        ex = feat["examples"][0]
        assert "[[" in ex["context"] and ex["value"] > 0 and ex["id"]


# --- bad input -----------------------------------------------------------------------------------

def test_bad_layer_and_folders(data: dict[str, Path], sae_dir: Path, tmp_path: Path) -> None:
    proc = cli("sae", "train", "--input", data["train"], "--output", tmp_path / "x",
               "--layer", "30", "--steps", "1")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == ("error: layer 30 is out of range: model "
                                                    "'smollm2-135m' has 30 layers (0 to 29)")
    no_w = tmp_path / "no_weights"
    no_w.mkdir()
    shutil.copy(sae_dir / "cfg.json", no_w)
    no_c = tmp_path / "no_cfg"
    no_c.mkdir()
    shutil.copy(sae_dir / "sae_weights.safetensors", no_c)
    for folder, text in ((no_w, "has no weights"), (no_c, "has no cfg.json")):
        proc = cli("sae", "info", folder)
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: SAE folder") and text in lines[0]


def test_width_mismatch_other_model_and_empty_target(data: dict[str, Path], sae_dir: Path,
                                                     tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    narrow = tmp_path / "narrow"
    narrow.mkdir()
    save_file({"W_enc": torch.zeros(64, 128), "W_dec": torch.zeros(128, 64),
               "b_enc": torch.zeros(128), "b_dec": torch.zeros(64)},
              str(narrow / "sae_weights.safetensors"))
    (narrow / "cfg.json").write_text(json.dumps({"architecture": "topk", "k": 8, "d_in": 64,
                                                 "d_sae": 128, "hook_name": "blocks.3.hook_resid_post"}))
    proc = cli("sae", "features", narrow, "--data", data["target"], "--max-length", "16")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"error: SAE {narrow} reads activations of width 64, but model 'smollm2-135m' has "
        "hidden size 576")

    other = tmp_path / "other"
    shutil.copytree(sae_dir, other)
    cfg = json.loads((other / "cfg.json").read_text())
    cfg["metadata"]["model_name"] = cfg["model_name"] = "gpt2"
    (other / "cfg.json").write_text(json.dumps(cfg))
    proc = cli("sae", "features", other, "--data", data["target"], "--top", "1",
               "--max-length", "16", "--max-rows", "2")
    assert proc.returncode == 0
    warn = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning:")]
    assert warn == [f"warning: SAE {other} was trained on model 'gpt2', but the activations "
                    "come from model 'smollm2-135m'"]

    proc = cli("run", "pipelines/sae_select.py", "--input", data["pool"], "--output",
               tmp_path / "run", "--set", f"sae={sae_dir}", "--set", f"target={data['empty']}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: target set {data['empty']} has no rows"
