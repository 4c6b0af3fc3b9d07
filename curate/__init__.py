"""curate: data curation and selection for LLM post-training data.

>>> from curate import read
>>> run = read("sample_data/sft").score("quality").filter("not quality_refusal").write("runs/x")
"""

from curate.errors import CurateError
from curate.pipeline import Param, Pipeline, pipeline, read
from curate.run import Run, open_run
from curate.sql import connect

__all__ = ["CurateError", "Param", "Pipeline", "Run", "connect", "open_run", "pipeline", "read"]
