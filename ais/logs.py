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


#: Seconds between progress lines of a long loop (training, validation, ablation, maps, crops, panels).
PROGRESS_EVERY = 30.0


class Progress:
    """Progress lines (done/total, items per second, elapsed, ETA of the loop) every ``every`` s, and at the end.

    The first update logs at once (a loop that has started says so), unless
    ``start_after`` seconds must pass first: then a loop shorter than that
    logs nothing, not even its end (for loops whose caller logs a summary,
    such as an epoch's validation).
    """

    def __init__(self, total: int, what: str, logger: logging.Logger, every: float = 10.0,
                 start_after: float = 0.0) -> None:
        self.total, self.what, self.log, self.every, self.start_after = total, what, logger, every, start_after
        self.start = time.perf_counter()
        self._last = -float("inf")

    def update(self, done: int) -> None:
        """Record ``done`` items of ``total``; log a line when ``every`` seconds have passed (or at the end)."""
        now = time.perf_counter()
        elapsed = now - self.start
        if elapsed < self.start_after or (done < self.total and now - self._last < self.every):
            return
        self._last = now
        rate = done / elapsed if elapsed > 0 else float("nan")
        eta = (self.total - done) / rate if rate and rate > 0 else float("nan")
        self.log.info("%s %d/%d, %.2f/s, elapsed %.0f s, ETA %.0f s", self.what, done, self.total, rate, elapsed, eta)
