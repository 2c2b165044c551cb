"""Paths in a request and the result files a job writes (docs/contract.md §2 "Paths and results").

Checked before queueing: a path is absolute, has no NUL byte, and every name in it fits the file system;
an output has its key's extension, sits in an existing writable folder, and replaces an existing file
only when the request says `overwrite` and that file is a regular one that is not an input, the token,
the state file or a model. Results are written to a partial file beside the output and moved onto it
only when complete (`commit`), without replacing anything the request did not allow it to.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
from pathlib import Path

from backend.errors import BackendError, ConflictError

NAME_MAX = 255  # bytes per file name on Linux, macOS and NTFS (in UTF-16 units there)
PATH_MAX = 4096
LOW_DISK_BYTES = 1024 * 1024  # below this, a write failure without a clear reason is taken as a full disk
# `.<stem>.<job id>.partial<ext>` adds this much at most to an output's name (job ids are 12 characters).
PARTIAL_EXTRA = len("..") + 12 + len(".partial")
# The extensions each kind of output may have (lower case).
EXTENSIONS = {"raster": (".tif", ".tiff"), "gpkg": (".gpkg",), "html": (".html", ".htm")}


def checked_path(text: str, what: str) -> Path:
    """`text` as an absolute path the file system can take, or a BackendError naming `what`."""
    if "\0" in text:
        raise BackendError(f"{what} {text!r} contains a NUL byte; give a plain file path.")
    path = Path(text)
    if not path.is_absolute():
        raise BackendError(f"{what} '{text}' must be an absolute path.")
    encoded = os.fsencode(text) if _encodable(text) else None
    if encoded is None:
        raise BackendError(f"{what} {text!r} cannot be encoded for this file system; rename it.")
    if len(encoded) > PATH_MAX:
        raise BackendError(f"{what} is {len(encoded)} bytes long; paths may have at most {PATH_MAX}.")
    for part in path.parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise BackendError(f"{what} has a name of {len(os.fsencode(part))} bytes ('{part[:40]}…'); "
                               f"file names may have at most {NAME_MAX} bytes.")
    return path


def _encodable(text: str) -> bool:
    try:
        os.fsencode(text)
    except UnicodeError:
        return False
    return True


def check_output(text: str, key: str, kind: str, overwrite: bool, protected: dict[Path, str]) -> Path:
    """outputs[key] checked before queueing; `kind` picks the allowed extensions (EXTENSIONS), `protected`
    maps files that must never be replaced (inputs, the token, models) to what they are."""
    what = f"outputs.{key}"
    path = checked_path(text, what)
    suffixes = EXTENSIONS[kind]
    if path.suffix.lower() not in suffixes:
        raise BackendError(f"{what} {path} must be a {' or '.join(suffixes)} file; choose a name ending in "
                           f"{suffixes[0]} (the backend writes only files of its result types).")
    if len(os.fsencode(path.name)) + PARTIAL_EXTRA > NAME_MAX:
        raise BackendError(f"{what} {path}: the file name is too long to write beside it as a partial file; "
                           f"keep it under {NAME_MAX - PARTIAL_EXTRA} bytes.")
    folder = path.parent
    if not folder.is_dir():
        raise BackendError(f"Output folder {folder} does not exist; create it or choose another.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BackendError(f"Output folder {folder} is not writable; choose another folder.")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path
    except OSError as exc:
        raise BackendError(f"{what} {path} cannot be checked: {exc.strerror}.") from exc
    refuse_replacing(path, st, what, protected)
    if not overwrite:
        raise ConflictError(f"{what} {path} already exists; set \"overwrite\": true in the request (command line: "
                            "--overwrite) to replace it, or choose another name.")
    return path


def refuse_replacing(path: Path, st: os.stat_result, what: str, protected: dict[Path, str]) -> None:
    """Raise unless the existing `path` (lstat `st`) is a regular file the backend may replace."""
    if stat.S_ISDIR(st.st_mode):
        raise BackendError(f"{what} {path} is a folder; give a file name inside it.")
    if stat.S_ISLNK(st.st_mode):
        raise BackendError(f"{what} {path} is a symbolic link; the backend replaces only regular files. "
                           "Give the path it points to, or another name.")
    if not stat.S_ISREG(st.st_mode):
        raise BackendError(f"{what} {path} is not a regular file (a device, pipe or socket); choose a file name.")
    for other, role in protected.items():
        try:
            same = os.path.samefile(path, other)
        except OSError:
            continue
        if same:
            raise BackendError(f"{what} {path} is {role}; the backend never replaces it. Choose another name.")


def commit_all(moves: list[tuple[Path, Path]], overwrite: bool) -> None:
    """Several (partial, target) moves that belong together (change raster and polygons): every target is
    checked before any is moved; if one still fails, the targets already moved that were new are removed."""
    for _, target in moves:
        _check_target(target, overwrite)
    done: list[tuple[Path, bool]] = []
    try:
        for partial, target in moves:
            existed = os.path.lexists(target)
            commit(partial, target, overwrite)
            done.append((target, existed))
    except BaseException:
        for target, existed in done:
            if not existed:
                target.unlink(missing_ok=True)
        raise


def _check_target(target: Path, overwrite: bool) -> bool:
    """Whether `target` exists; raises when it may not be replaced (see commit)."""
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return False
    refuse_replacing(target, st, "The output", {})
    if not overwrite:
        raise ConflictError(f"{target} appeared while the job ran (written by another program or job); it was "
                            "left as it is and this job's result discarded. Run again with overwrite, or "
                            "choose another name.")
    return True


def commit(partial: Path, target: Path, overwrite: bool) -> None:
    """Move a complete partial file onto its output. Without `overwrite`, a file that appeared there
    meanwhile (another program, another job) is left alone and the job fails; with it, only a regular
    file is replaced."""
    if _check_target(target, overwrite) or overwrite:
        os.replace(partial, target)
        return
    # A hard link fails when the name exists: no window in which a file created meanwhile is replaced.
    try:
        os.link(partial, target)
    except FileExistsError:
        raise ConflictError(f"{target} appeared while the job ran; it was left as it is and this job's result "
                            "discarded.") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        os.replace(partial, target)  # a file system without hard links (FAT, some network shares)
        return
    os.unlink(partial)


def disk_full_message(exc: BaseException, outputs: list[Path]) -> str | None:
    """"Not enough disk space ..." when `exc` (while writing `outputs`) comes from a full disk, else None.
    GDAL may report a full disk with an empty message: little free space counts as the reason then."""
    detail = (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)).strip()
    full = (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space left" in detail or "disk is full" in detail
    for folder in dict.fromkeys(p.parent for p in outputs):
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            continue
        if full or free < LOW_DISK_BYTES:
            shown = ", ".join(str(output_of_partial(p)) for p in outputs)
            return (f"Not enough disk space to write {shown}: the disk holding {folder} has "
                    f"{free} bytes free. Free some space or choose another output folder; nothing was written.")
    return None


def failure_message(exc: BaseException, outputs: list[Path]) -> str:
    """What to tell about an unexpected failure of a job writing `outputs`: a full disk is named as such,
    and the message is never empty."""
    detail = (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)).strip()
    return disk_full_message(exc, outputs) or (f"{type(exc).__name__}: {detail}" if detail
                                               else f"{type(exc).__name__} (no message was given)")


def creation_error(exc: BaseException, path: Path) -> BackendError:
    """A result file GDAL/OGR could not create or write: a full disk named as such, never an empty reason."""
    detail = str(exc).strip() or "GDAL gave no reason"
    return BackendError(disk_full_message(exc, [path])
                        or f"Could not create the result file {output_of_partial(path)}: {detail}.")


_PARTIAL = re.compile(r"^\.(?P<stem>.+)\.[^.]+\.partial(?:-[^.]*)?(?P<ext>\.[^.]+)?$")


def output_of_partial(path: Path) -> Path:
    """The output a partial file `.<stem>.<job id>.partial<ext>` stands for (for messages); other paths as they are."""
    match = _PARTIAL.match(path.name)
    return path.with_name(match["stem"] + (match["ext"] or "")) if match else path
