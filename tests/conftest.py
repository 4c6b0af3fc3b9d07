"""Shared fixtures: an isolated curate home, paths to real test data, CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
SAMPLE_SFT = ROOT / "sample_data" / "sft"
SAMPLE_PREF = ROOT / "sample_data" / "preference"

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


@pytest.fixture(scope="session", autouse=True)
def curate_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CURATE_HOME per test session (the converted embedded model lives there);
    score caches are per test (pass ``cache_dir``)."""
    home = Path(os.environ.get("CURATE_TEST_HOME") or tmp_path_factory.mktemp("curate_home"))
    os.environ["CURATE_HOME"] = str(home)
    return home


def curate_cli(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real ``curate`` CLI in a subprocess."""
    proc = subprocess.run([sys.executable, "-m", "curate.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"curate {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                             f"{proc.stderr[-3000:]}")
    return proc


def cli(*args: str) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess; never raises, the caller checks the result."""
    return curate_cli(*args, check=False)
