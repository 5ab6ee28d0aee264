"""Atomic file writes: a temporary file beside the target, renamed into place."""

from __future__ import annotations

import os
from pathlib import Path

from anomalib_ext.errors import AnomalibExtError


class OutputFolderError(AnomalibExtError, OSError):
    """An output folder or file that cannot or must not be written."""


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place.

    A failed write (full disk, file-size limit, read-only folder) removes the temporary file and
    raises an :class:`OutputFolderError` naming ``path``; ``path`` is then either absent or its old content.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("wb") as file:
            file.write(data)
        temporary.replace(path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        msg = (
            f"Could not write {path}: {error.strerror or error}. Free space or fix the folder's permissions, "
            "then run again."
        )
        raise OutputFolderError(msg) from error
