"""Progress: tqdm bars in a terminal; in a log (CI, a pipe, a file) at most one plain line per step.

tqdm in a non-terminal writes every refresh as a carriage-return frame, so a CI log fills with hundreds of them.
Here a non-terminal gets one line when a step ends (an epoch, a quantization attempt, a benchmark repetition),
with the step's figures, and nothing in between.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Iterator


def progress(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             enabled: bool = True) -> Any:
    """A tqdm bar on a terminal, a `LineProgress` elsewhere, or a silent one when not `enabled`."""
    if not enabled:
        return LineProgress(iterable, total=total, desc=desc, unit=unit, stream=None)
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, stream=sys.stderr)


class LineProgress:
    """The subset of tqdm's interface compress uses, writing `desc: 3/10 epoch, loss=0.12 (4.2 s)` per step."""

    def __init__(self, iterable: Iterable[Any] | None, *, total: int | None, desc: str, unit: str,
                 stream: Any) -> None:
        self.iterable = iterable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.desc, self.unit, self.stream = desc, unit, stream
        self.n = 0
        self.postfix = ""
        self.started = time.perf_counter()

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update(1)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.stream is None:
            return
        of = f"/{self.total}" if self.total else ""
        extra = f", {self.postfix}" if self.postfix else ""
        self.stream.write(f"{self.desc}: {self.n}{of} {self.unit}{extra} "
                          f"({time.perf_counter() - self.started:.1f} s)\n")
        self.stream.flush()

    def close(self) -> None:
        pass


def step(bar: Any, *, last: bool = False) -> None:
    """One step (a quantization attempt) done on `bar`, whose total counts what may still run. The last of a search
    (it stops early when one meets the budget or remedies cannot help) fills a terminal's bar; a log's line keeps
    the total and says "done" (a total shrunk to the count, "1/6" then "2/2", read as a second search)."""
    if last and isinstance(bar, LineProgress):
        bar.set_postfix_str("done")
    elif last:
        bar.total = bar.n + 1
    bar.update(1)


@contextlib.contextmanager
def quiet_fd(fd: int, into: Path | None = None) -> Iterator[None]:
    """Send what native code writes to file descriptor `fd` (1 or 2) into `into` (or nowhere) for the duration:
    libraries that print past Python's sys.stdout (a banner, a dump before an exception) stay off the terminal."""
    (sys.stdout if fd == 1 else sys.stderr).flush()
    target = os.open(str(into) if into else os.devnull, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    saved = os.dup(fd)
    try:
        os.dup2(target, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(target)
