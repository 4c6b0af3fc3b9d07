"""curate: data curation and selection for LLM post-training data.

>>> from curate import read
>>> run = read("sample_data/sft").score("quality").filter("not quality_refusal").write("runs/x")
"""

from curate.errors import CurateError
from curate.pipeline import Param, Pipeline, pipeline, read
from curate.run import Run, open_run


def __getattr__(name: str):  # curate.connect imports DuckDB on first use, not at import
    if name == "connect":
        from curate.sql import connect

        return connect
    raise AttributeError(f"module 'curate' has no attribute {name!r}")

__all__ = ["CurateError", "Param", "Pipeline", "Run", "connect", "open_run", "pipeline", "read"]
