"""Output folders that are safe to point at: nothing removed that we did not write, atomic writes, one writer.

- :func:`check_export_target` / :func:`staged_folder`: an export (or INT8 copy) is written into a
  temporary sibling and moved into place file by file. A folder that holds anything but an earlier
  export of ours is refused unless ``overwrite=True``, and even then only our files are replaced;
  the working folder, its parents and the folder of the input model or checkpoint are refused.
- :func:`write_bytes_atomic`: a temporary file renamed into place, so a full disk leaves no
  truncated or 0-byte file.
- :class:`OutputLock`: one ``anomalib-ext infer`` per output folder at a time.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from anomalib_ext.export_format import METADATA_FILE
from anomalib_ext.files import OutputFolderError

if TYPE_CHECKING:
    from collections.abc import Generator, Iterable
    from typing import IO

# Files every export of ours may hold besides the ones its metadata lists (older exports list none).
EXPORT_FILES = frozenset({"model.xml", "model.bin", METADATA_FILE, "quantization_report.json"})


def current_umask() -> int:
    """The process umask (read by setting and restoring it; there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _is_same_or_parent(folder: Path, path: Path) -> bool:
    return folder == path or folder in path.parents


def _previous_export_files(folder: Path) -> set[str] | None:
    """The files an earlier export of ours wrote into ``folder``; ``None`` when it is not one of ours."""
    try:
        metadata = json.loads((folder / METADATA_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(metadata, dict) or "format_version" not in metadata:
        return None
    return set(EXPORT_FILES) | set(metadata.get("files", []))


def check_export_target(output: str | Path, inputs: Iterable[str | Path] = (), overwrite: bool = False) -> Path:
    """Refuse an export target we could damage; returns the resolved path.

    Refused: an existing file; the working folder or one of its parents; a folder holding (or equal
    to) one of ``inputs`` (the checkpoint or the FP32 model being read); and, unless ``overwrite``,
    a non-empty folder that is not an earlier export of ours.
    """
    target = Path(output).expanduser().resolve()
    if target.exists() and not target.is_dir():
        msg = f"--output {output} is a file; give a folder for the export (it is created if missing)."
        raise OutputFolderError(
            msg,
        )
    if _is_same_or_parent(target, Path.cwd().resolve()):
        msg = (
            f"--output {output} is the working folder or one of its parents; "
            "give a new sub-folder, e.g. --output deploy/model."
        )
        raise OutputFolderError(
            msg,
        )
    for item in inputs:
        source = Path(item).expanduser().resolve()
        if _is_same_or_parent(target, source):
            msg = f"--output {output} holds the input {item}; write the export to another folder."
            raise OutputFolderError(msg)
    if target.is_dir() and any(target.iterdir()) and _previous_export_files(target) is None and not overwrite:
        msg = (
            f"--output {output} is not empty and is not an anomalib-ext export. Choose a new folder, or pass "
            "--overwrite to write the export files into it (nothing else in it is removed)."
        )
        raise OutputFolderError(
            msg,
        )
    return target


@contextmanager
def staged_folder(
    output: str | Path,
    inputs: Iterable[str | Path] = (),
    overwrite: bool = False,
) -> Generator[Path, None, None]:
    """A temporary sibling of ``output`` to write an export into, moved into place when the block succeeds.

    On failure the staging folder is removed and ``output`` is untouched. On success a new ``output``
    is the staging folder renamed; into an existing one, the files of an earlier export that the new
    one lacks are removed and the new files replace theirs, ``metadata.json`` last. Nothing else in
    ``output`` is touched. See :func:`check_export_target` for what is refused up front.
    """
    target = check_export_target(output, inputs, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:  # ruff: ignore[too-many-statements-in-try-clause] - any failure on the way must remove the staging folder
        Path(staging).chmod(0o777 & ~current_umask())  # mkdtemp makes 0700; an export is an ordinary output
        yield staging
        if not target.exists():
            staging.rename(target)
            return
        stale = (_previous_export_files(target) or set()) - {p.name for p in staging.iterdir()}
        for name in sorted(stale):
            (target / name).unlink(missing_ok=True)
        new_files = sorted(staging.iterdir(), key=lambda p: p.name == METADATA_FILE)
        for path in new_files:
            Path(path).replace(target / path.name)
        staging.rmdir()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


class OutputLock:
    """An exclusive lock on an output folder (a lock file inside it), held for the life of the run.

    The lock file also marks the folder as anomalib-ext output, so later input searches skip it.
    The operating system drops the lock when the process ends, however it ends.
    """

    FILE = ".anomalib-ext-output.lock"

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / self.FILE
        self._file = None

    def __enter__(self) -> OutputLock:
        """Take the lock, or raise :class:`OutputFolderError` when another run holds it."""
        self._file = Path(self.path).open("a+", encoding="utf-8")
        try:
            _lock_exclusive(self._file)
        except OSError:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            msg = (
                f"{self.path.parent} is being written by {holder}. Wait for that run to end, or give another --output."
            )
            raise OutputFolderError(
                msg,
            ) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"anomalib-ext (pid {os.getpid()})")
        self._file.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        """Release the lock."""
        self._file.close()  # closing releases the lock


def _lock_exclusive(file: IO[str]) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        msvcrt.locking(file.fileno(), msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def is_output_folder(folder: Path) -> bool:
    """A folder written by ``anomalib-ext infer`` (its lock file is there)."""
    return (folder / OutputLock.FILE).is_file()
