"""The one error type users see, and the helpers that keep its message one short line."""
from __future__ import annotations

MAX_MESSAGE_CHARS = 300
"""Longest piece of someone else's message (an exception, a list of names) quoted inside one of ours."""


class CompressError(Exception):
    """A problem the user can fix: bad config, missing file, unusable model. Exit code 2.

    The message is one line: where (file, dotted key or line), what was expected, what to do.
    """

    exit_code = 2


class GateFailed(CompressError):
    """A quality gate failed (accuracy budget, latency regression). Exit code 1."""

    exit_code = 1


class InputsRejected(CompressError):
    """A model that did not run in ONNX Runtime on the inputs it was given (ids past its vocabulary, two inputs of
    different lengths). `model` and `why` (ORT's first line) stay apart, so a caller that knows the inputs' file
    (compress quantize's --calibration, compress edge's --inputs) names it in its own line."""

    def __init__(self, model: object, inputs: str, why: str) -> None:
        self.model, self.why = str(model), why
        super().__init__(f"{model}: did not run on {inputs} in ONNX Runtime ({why})")


class LossNotScalar(CompressError):
    """The user's loss returned what training cannot step on (a number, a tensor without a gradient, unreduced),
    where the task adds it to terms of its own whose gradient would hide it; the trainer names the loss and the
    step (compress.train.objective.step_loss)."""

    def __init__(self, value: object) -> None:
        self.value = value
        super().__init__(f"the loss returned {type(value).__name__}; expected a scalar tensor computed from the "
                         "outputs")


class WorkerFailed(CompressError):
    """A training worker process died (killed, crashed, lost its peers): exit code 1; rerunning resumes."""

    exit_code = 1


PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "remote worker crashing", "Broken pipe")
"""How gloo/nccl tell a rank that another one died: a consequence, never the root cause when the cause is known
(compress.dist.failure), and never the user's code's fault (compress.train.objective)."""


def where(path: object, key: str | None = None) -> str:
    """Prefix for messages: 'pipelines/x.toml: quantize.mode'."""
    return f"{path}: {key}" if key else f"{path}"


def shorten(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` on one line (white space folded), cut to `limit` characters with a count of what was cut."""
    flat = " ".join(str(text).split())
    if len(flat) <= limit:
        return flat
    return f"{flat[:limit].rstrip()}... ({len(flat) - limit} more characters)"


def shorten_list(items: "list[str] | tuple[str, ...]", what: str, shown: int = 5) -> str:
    """'a, b, c, d, e and 412 more inputs': the first `shown` items of a long list and a count of the rest."""
    items = [str(i) for i in items]
    if len(items) <= shown:
        return ", ".join(items)
    return f"{', '.join(items[:shown])} and {len(items) - shown} more {what}"


def first_line(exc: BaseException, limit: int = MAX_MESSAGE_CHARS) -> str:
    """The first non-empty line of an exception's message (its type name when empty), shortened to `limit`."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return shorten(lines[0], limit) if lines else type(exc).__name__


def unwrap_worker(text: str) -> str:
    """The user's line inside a DataLoader worker's re-raised error ("Caught CompressError in DataLoader worker
    process 0. Original Traceback ... compress.errors.CompressError: <line>"): that last line; else `text`."""
    if not text.startswith("Caught ") or "Original Traceback" not in text:
        return text
    last = text.rstrip().splitlines()[-1]
    head, sep, tail = last.partition("Error: ")
    return tail if sep and " " not in head else last


class Stopped(BaseException):
    """The process was asked to stop (SIGTERM, SIGHUP): raised where it was, so every `with` block (scratch folders,
    the run lock, torchrun children) unwinds as for Ctrl-C. Exit code 128 + the signal's number."""

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(self.name)


def stop_on_signals() -> None:
    """SIGTERM (what CI cancellations and `kill` send) and SIGHUP (a closed terminal) raise Stopped in the main
    thread, so they clean up as Ctrl-C does instead of ending the process where it stands."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum: int, _frame: object) -> None:
        raise Stopped(signum)

    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, stop)
