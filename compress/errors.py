"""The one error type users see. The CLI turns it into one line and an exit code."""
from __future__ import annotations


class CompressError(Exception):
    """A problem the user can fix: bad config, missing file, unusable model. Exit code 2.

    The message is one line: where (file, dotted key or line), what was expected, what to do.
    """

    exit_code = 2


class GateFailed(CompressError):
    """A quality gate failed (accuracy budget, latency regression). Exit code 1."""

    exit_code = 1


def where(path: object, key: str | None = None) -> str:
    """Prefix for messages: 'pipelines/x.toml: quantize.mode'."""
    return f"{path}: {key}" if key else f"{path}"


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type name when empty), cut to `limit` characters."""
    text = str(exc).strip().splitlines()
    return text[0][:limit] if text else type(exc).__name__
