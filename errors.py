"""tnt's error policy: an anticipated failure is one line, ``error: <file>: <what is wrong>``; a bug keeps its traceback.

Anticipated failures are bad files, bad settings, missing data, a full or read-only disk and divergence. Each is a
``TntError`` (the package errors ``CheckpointError``, ``ConfigError``, ``ShardError``, ``VocabError``,
``AnalysisError``, ``DecompError``, … derive from it) or an ``OSError`` about a path. Every entry point runs its
``main`` through ``run_cli``, which prints those as one line on stderr and returns a non-zero exit status, and lets
everything else (bugs) raise with its traceback::

    if __name__ == "__main__":
        sys.exit(run_cli(main))

Files are validated where they are loaded, with ``require`` giving one-line messages that name the file and field.
"""

from __future__ import annotations

import errno
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["StorageError", "TntError", "os_error_reason", "require", "run_cli", "storage_error", "writing"]


class TntError(Exception):
    """An anticipated failure; the message names the file (or setting) and says what is wrong, on one line."""


class StorageError(TntError, OSError):
    """Reading or writing a path failed at the OS level (full disk, read-only folder, permission denied, …).

    Also an OSError (with ``errno``), so code that handles OSError keeps working; ``str()`` is the one-line
    message ``<path>: <reason>``.
    """

    def __init__(
        self, message: str, errno_: int | None = None, path: str | Path | None = None, reason: str = ""
    ):
        OSError.__init__(self, errno_, message)
        self.message, self.path, self.reason = message, path, reason or message

    def __str__(self) -> str:
        return self.message


# errno -> the words of the one-line message; other errnos use the OS's own strerror.
_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOENT: "no such file or folder",
    errno.ENOTDIR: "a path component is not a folder",
    errno.EISDIR: "is a folder, not a file",
    errno.EEXIST: "already exists",
    errno.EIO: "input/output error",
    errno.EFBIG: "file too large",
    errno.ENAMETOOLONG: "file name too long",
    errno.EMFILE: "too many open files",
    errno.ENOTEMPTY: "folder not empty",
}
# OSErrors that are about the machine's storage, so anticipated even when they carry no file name.
_STORAGE_ERRNOS = frozenset(_REASONS) - {errno.EEXIST, errno.ENOTEMPTY}


def os_error_reason(e: OSError) -> str:
    """The words for an OSError: 'no space left on device', 'read-only file system', … (never multi-line)."""
    if e.errno in _REASONS:
        return _REASONS[e.errno]
    return " ".join(str(e.strerror or e).split()) or type(e).__name__


def storage_error(e: OSError, path: str | Path | None = None) -> StorageError:
    """A StorageError ``<path>: <reason>``; ``path`` defaults to the file name the OSError carries."""
    where = path if path is not None else e.filename
    reason = os_error_reason(e)
    return StorageError(f"{where}: {reason}" if where is not None else reason, e.errno, where, reason)


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn an OSError raised in the block (e.g. ENOSPC from ``write``, which names no file) into a StorageError
    naming ``path``."""
    try:
        yield
    except StorageError:
        raise
    except OSError as e:
        raise storage_error(e, path) from e


def atomic_write_bytes(path: str | Path, *chunks: bytes) -> None:
    """Write ``chunks`` (one after the other) to ``path`` via a temporary file in the same directory and
    ``os.replace``.

    A reader never sees a half-written file: the old file (if any) stays until the new one is complete. On a
    full or read-only disk the temporary file is removed and a StorageError names ``path``.
    """
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o644)  # mkstemp creates 0600; checkpoints and shards are ordinary shared files
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)


def fsync_dir(folder: str | Path) -> None:
    """Make a rename inside ``folder`` durable (best effort: some file systems refuse to fsync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


_KINDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "int": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "number": (
        "a finite number",
        lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v),
    ),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "str": ("a string", lambda v: isinstance(v, str)),
    "dict": ("an object", lambda v: isinstance(v, dict)),
    "list": ("a list", lambda v: isinstance(v, list | tuple)),
}


def require(
    obj: dict,
    key: str,
    kind: str,
    where: str | Path,
    *,
    minimum: float | None = None,
    optional: bool = False,
    error: type[Exception] = TntError,
    prefix: str = "",
) -> Any:
    """``obj[key]`` checked to be of ``kind`` (int, number, bool, str, dict, list) and ≥ ``minimum``.

    Raises ``error("<where>: field '<prefix><key>' must be …, got …")``; a missing key is an error unless ``optional``
    (then None is returned). ``bool`` never passes as an int or number, and numbers must be finite.
    """
    name = f"{prefix}{key}"
    if key not in obj:
        if optional:
            return None
        raise error(f"{where}: missing field {name!r}")
    value = obj[key]
    words, ok = _KINDS[kind]
    if not ok(value):
        raise error(f"{where}: field {name!r} must be {words}, got {_show(value)}")
    if minimum is not None and value < minimum:
        raise error(f"{where}: field {name!r} must be >= {minimum:g}, got {value!r}")
    return value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def one_line(message: object) -> str:
    """``message`` with its whitespace (newlines included) collapsed, so it prints on one line."""
    return " ".join(str(message).split())


def run_cli(
    main: Callable[..., Any],
    argv: Sequence[str] | None = None,
    *,
    status: int = 1,
    anticipated: tuple[type[BaseException], ...] = (),
) -> int:
    """Run ``main(argv)`` under tnt's error policy and return the process exit status.

    - ``TntError`` (and the extra ``anticipated`` types), an ``OSError`` that names a file or is about storage
      (full disk, read-only, permission), and ``SystemExit`` with a message: ``error: <message>`` on one line to
      stderr, exit status ``status``;
    - ``SystemExit`` with a number (argparse, signals): that number; ``KeyboardInterrupt``: 130;
    - anything else propagates with its traceback (a bug).

    ``main``'s return value is the status when it is an int, else 0.
    """
    try:
        result = main(argv) if argv is not None else main()
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        message = one_line(e.code)
        print(message if message.startswith("error:") else f"error: {message}", file=sys.stderr)
        return status
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except (TntError, *anticipated) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return status
    except OSError as e:
        if e.filename is None and e.errno not in _STORAGE_ERRNOS:
            raise
        print(f"error: {one_line(storage_error(e))}", file=sys.stderr)
        return status
    return result if isinstance(result, int) and not isinstance(result, bool) else 0
