"""Logging set-up for workflow jobs: one log file per job, progress lines with ETA."""

from __future__ import annotations

import logging
import sys
import time


def setup_logging(path: str | None = None, level: int = logging.INFO) -> logging.Logger:
    """Send log records (and Python warnings) to ``path`` (append) and stderr."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if path:
        handlers.append(logging.FileHandler(path, mode="a", encoding="utf-8"))
    logging.basicConfig(
        level=level, handlers=handlers, force=True,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%Y-%m-%d %H:%M:%S",
    )
    logging.captureWarnings(True)
    return logging.getLogger("ais")


class Progress:
    """Progress lines (done/total, rate, ETA) at most every ``every`` seconds, and at the end."""

    def __init__(self, total: int, what: str, logger: logging.Logger, every: float = 10.0) -> None:
        self.total, self.what, self.log, self.every = total, what, logger, every
        self.start = time.perf_counter()
        self._last = -float("inf")

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if done < self.total and now - self._last < self.every:
            return
        self._last = now
        elapsed = now - self.start
        rate = done / elapsed if elapsed > 0 else float("nan")
        eta = (self.total - done) / rate if rate and rate > 0 else float("nan")
        self.log.info("%s %d/%d, %.2f/s, elapsed %.0f s, ETA %.0f s", self.what, done, self.total, rate, elapsed, eta)
