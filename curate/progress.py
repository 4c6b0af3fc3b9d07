"""Messages and progress on stderr; silent under ``quiet``.

On a terminal a progress bar is a tqdm bar that redraws itself in place. When
stderr is not a terminal (a log file, CI, a pipe) a bar prints plain lines
instead, never carriage returns: ``score perplexity: 128/280 rows (46%, 3.1
rows/s, 41 s, about 49 s left, ...)`` at most every ``CURATE_PROGRESS_INTERVAL`` seconds (default 10),
and a last line when it is done if it printed any. ``CURATE_PROGRESS=plain`` or
``=bar`` chooses one regardless of the terminal.

The progress bars and the info logging of transformers and huggingface_hub
(e.g. "Loading weights") are switched off while curate works: curate reports
its own progress.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

DEFAULT_INTERVAL = 10.0


def silence_hf() -> None:
    """Switch off the progress bars and info messages of transformers and
    huggingface_hub (their env settings for libraries not imported yet, their
    switches for those already imported). A user's own env settings win."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") != "1":
        return  # the user asked for them
    hub = sys.modules.get("huggingface_hub")
    if hub is not None:
        try:
            hub.utils.disable_progress_bars()
        except AttributeError:
            pass
    if "transformers" in sys.modules:
        try:
            from transformers.utils import logging as tlog

            tlog.disable_progress_bar()
            if os.environ.get("TRANSFORMERS_VERBOSITY") == "error":
                tlog.set_verbosity_error()
        except (ImportError, AttributeError):
            pass


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("CURATE_PROGRESS_INTERVAL", DEFAULT_INTERVAL)))
    except ValueError:
        return DEFAULT_INTERVAL


def _plain() -> bool:
    mode = os.environ.get("CURATE_PROGRESS", "").strip().lower()
    if mode in ("plain", "bar"):
        return mode == "plain"
    try:
        return not sys.stderr.isatty()
    except (AttributeError, ValueError):
        return True


class PlainProgress:
    """A progress bar as log lines (see the module doc); the part of tqdm's interface
    curate uses: ``update``, ``close`` and the context manager."""

    def __init__(self, desc: str, total: int | None = None, unit: str = "rows",
                 interval: float | None = None, disable: bool = False):
        self.desc, self.total, self.unit, self.disable = desc, total, unit, disable
        self.interval = _interval() if interval is None else interval
        self.n = 0
        self.lines = 0
        self.postfix = ""
        self.start = self.last = time.monotonic()

    def set_postfix(self, **values: Any) -> None:
        """Extra figures for the next line (e.g. loss), as tqdm's ``set_postfix``."""
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def set_postfix_str(self, text: str) -> None:
        """Extra text for the next line, as tqdm's ``set_postfix_str``."""
        self.postfix = text

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.disable:
            return
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._line(now)

    def _line(self, now: float, done: bool = False) -> None:
        elapsed = now - self.start
        of = f"/{self.total:,}" if self.total else ""
        bits = []
        if self.total:
            bits.append(f"{100 * self.n / self.total:.0f}%")
        if elapsed > 0 and self.n:
            rate = self.n / elapsed
            bits.append(f"{rate:,.1f} {self.unit}/s" if rate < 100 else f"{rate:,.0f} {self.unit}/s")
        bits.append(f"{elapsed:.0f} s")
        if self.total and self.n and not done and self.n < self.total:
            bits.append(f"about {(self.total - self.n) * elapsed / self.n:.0f} s left")
        if self.postfix:
            bits.append(self.postfix)
        print(f"{self.desc}: {'done, ' if done else ''}{self.n:,}{of} {self.unit} ({', '.join(bits)})",
              file=sys.stderr, flush=True)
        self.lines += 1

    def close(self) -> None:
        if not self.disable and self.lines:  # a bar that said something says it finished
            self._line(time.monotonic(), done=True)
            self.lines = 0
        self.disable = True

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Log:
    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        silence_hf()

    def info(self, msg: str) -> None:
        if not self.quiet:
            print(msg, file=sys.stderr, flush=True)

    def bar(self, desc: str, total: int | None = None, unit: str = "rows") -> Any:
        """A progress bar: tqdm on a terminal, plain lines otherwise (see the module doc)."""
        if self.quiet or _plain():
            return PlainProgress(desc, total, unit, disable=self.quiet)
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                    leave=False)
