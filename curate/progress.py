"""Messages and progress bars on stderr; silent under ``quiet``."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


class Log:
    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    def info(self, msg: str) -> None:
        if not self.quiet:
            print(msg, file=sys.stderr, flush=True)

    def bar(self, desc: str, total: int | None = None, unit: str = "rows") -> tqdm:
        return tqdm(total=total, desc=desc, unit=unit, disable=self.quiet, file=sys.stderr,
                    dynamic_ncols=True, leave=False)
