"""The base of every error the plugin raises for bad input, so front ends can print it in one line.

Each concrete error also keeps the built-in base that describes it (``FileNotFoundError``,
``ValueError`` ...), so callers that catch those keep working. The message itself names the file and
the fix; a command line prints it without a traceback and exits with :data:`EXIT_USAGE`.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_SOME_FAILED = 1  # the command ran, but some inputs could not be used (anomalib-ext infer)
EXIT_USAGE = 2  # bad arguments or inputs: nothing was done (argparse uses 2 as well)


class AnomalibExtError(Exception):
    """Bad input the user can fix; the message says what and how."""

    # The most recent one raised in this process: jsonargparse re-raises errors from a model's
    # constructor as a long "Union subtypes" ValueError that quotes them but drops the chain;
    # :func:`find_user_error` uses this to recover the original.
    latest: AnomalibExtError | None = None

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        AnomalibExtError.latest = self


def find_user_error(error: BaseException) -> AnomalibExtError | None:
    """The :class:`AnomalibExtError` behind ``error``: in its cause/context chain, or quoted in its message."""
    seen = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, AnomalibExtError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    latest = AnomalibExtError.latest
    if latest is not None:
        first_line = " ".join(str(latest).strip().splitlines()[0].split()) if str(latest).strip() else ""
        if first_line and first_line in " ".join(str(error).split()):
            return latest
    return None
