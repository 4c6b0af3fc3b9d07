#!/usr/bin/env bash
# The peers' environment for bench/dedup.py: curate (editable) plus the MinHash dedup
# peers datatrove, text-dedup, datasketch and rensa, apart from .venv so that their pins
# cannot disturb the engine's environment. spacy is only for
# `bench/dedup.py --peer-shingles native` (datatrove's own English word tokenizer).
#
#     bash bench/setup_peers.sh                        # creates .venv-bench (~4 min)
#     .venv/bin/python bench/dedup.py --docs 50000     # uses .venv-bench/bin/python for the peers
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-bench}
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q torch==2.13.0 -e .
"$VENV/bin/pip" install -q datatrove text-dedup datasketch rensa
"$VENV/bin/pip" install -q spacy
"$VENV/bin/python" - <<'PY'
from importlib.metadata import version
for p in ("curate", "datatrove", "text-dedup", "datasketch", "rensa", "datasets", "xxhash", "spacy"):
    print(f"{p} {version(p)}")
PY
