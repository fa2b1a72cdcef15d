"""Writing files and directories so that a reader never sees half of one.

Everything is written under a temporary name beside its destination (same file system) and
renamed into place once complete; a failure removes the temporary and leaves the destination
as it was. These are the only helpers for that in the package.

A killed process cannot clean up, so every temporary name carries its writer's process id and
host (``.NAME.PID@HOST.*``); the next write to the same destination removes those whose process
on this host is gone.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from dcr_mllm.errors import DcrError, WriteError

#: the faults of a destination rather than of the program, with what to do about each
WRITE_FAULTS = {
    errno.ENOSPC: ("no space left on device", "free space there or write elsewhere"),
    errno.EDQUOT: ("disk quota exceeded", "free space within your quota or write elsewhere"),
    errno.EROFS: ("read-only file system", "write to a writable folder"),
    errno.EACCES: ("permission denied", "fix the folder's permissions or write elsewhere"),
    errno.EPERM: ("operation not permitted", "fix the folder's permissions or write elsewhere"),
}
_OS_ERROR_CODE = re.compile(r"\(os error (\d+)\)")  # how the Rust writers (safetensors, tokenizers) report an errno


def fault_errno(err: BaseException) -> int | None:
    """The errno of a write fault (``WRITE_FAULTS``) behind ``err``, or None for any other error."""
    if isinstance(err, OSError):
        code = err.errno
    else:
        match = _OS_ERROR_CODE.search(str(err))
        code = int(match.group(1)) if match else None
    return code if code in WRITE_FAULTS else None


def fault_message(err: BaseException, path: str | Path | None, code: int) -> str:
    """One line: the file (the error's own, else ``path``), the cause and the fix."""
    where = _culprit(err, path) or "the output"
    verb = "cannot access" if code in (errno.EACCES, errno.EPERM) else "cannot write"
    cause, fix = WRITE_FAULTS[code]
    return (
        f"{verb} {where}: {cause} ({errno.errorcode[code]}); {fix}, then run the same command again (nothing partial "
        "was kept; training resumes from its last checkpoint)"
    )


def user_error_line(err: BaseException) -> str | None:
    """The one line to print for an error meant for the user (a ``DcrError``, or a write fault met
    outside ``writing``), or None for one that should keep its traceback."""
    if isinstance(err, DcrError):
        return f"error: {err}"
    code = fault_errno(err)
    return None if code is None else f"error: {fault_message(err, None, code)}"


def _culprit(err: BaseException, path: str | Path | None) -> str | Path | None:
    """The file to name: ``path`` when the error is about it or one of its temporaries (which the
    user never asked for), else the file the error names (an input read inside the block)."""
    filename = getattr(err, "filename", None)
    if path is None or not filename:
        return filename or path
    dest, failed = Path(path), Path(filename)
    temporaries = (f".{dest.name}.", f".{dest.stem}.")
    ours = [failed, *failed.parents]
    return path if dest in ours or any(p.name.startswith(temporaries) for p in ours) else filename


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn a write fault met in the block (a full disk, a quota, a read-only or forbidden folder)
    into one ``WriteError`` line naming ``path`` and the cause; any other error passes unchanged."""
    try:
        yield
    except WriteError:
        raise
    except Exception as err:
        code = fault_errno(err)
        if code is None:
            raise
        raise WriteError(fault_message(err, path, code)) from err


def _owner() -> str:
    return f"{os.getpid()}@{_host()}"


def _host() -> str:
    return socket.gethostname().replace(".", "-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale(directory: Path, name: str) -> list[Path]:
    """Remove the temporaries a killed writer of ``directory/name`` left (by this host's dead
    processes); returns what was removed."""
    pattern = re.compile(rf"\.{re.escape(name)}\.(\d+)@(.+?)\.")
    removed = []
    host = _host()
    with contextlib.suppress(FileNotFoundError):
        for item in directory.iterdir():
            match = pattern.match(item.name)
            if match and match.group(2) == host and not _alive(int(match.group(1))):
                if item.is_dir() and not item.is_symlink():
                    shutil.rmtree(item, ignore_errors=True)
                else:
                    item.unlink(missing_ok=True)
                removed.append(item)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary file name beside ``path`` (same suffix, so writers that go by it still work),
    renamed to ``path`` when the block succeeds and removed when it fails."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{_owner()}.tmp{path.suffix}")
    with writing(path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale(path.parent, path.stem)
            yield tmp
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` through ``atomic_path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """An empty directory beside ``path`` to fill; when the block succeeds it becomes ``path``
    (an existing ``path`` is replaced only then), when it fails it is removed."""
    path = Path(path)
    with writing(path):
        tmp = _sibling_dir(path, ".partial")
        try:
            yield tmp
            tmp.chmod(0o755)  # mkdtemp makes it private
            if path.exists() or path.is_symlink():
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.{_owner()}.", suffix=".old", dir=path.parent))
                path.rename(old / "replaced")
                tmp.rename(path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def scratch_dir(path: str | Path) -> Iterator[Path]:
    """A temporary directory beside ``path`` (same file system), removed when the block ends
    however it ends; a killed writer's is removed by the next write to ``path``."""
    with writing(path):
        tmp = _sibling_dir(Path(path), ".scratch")
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _sibling_dir(path: Path, suffix: str) -> Path:
    """A new private directory beside ``path`` named for its writer, after removing dead writers' ones."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent, path.name)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.{_owner()}.", suffix=suffix, dir=path.parent))


#: in every generated data folder: what it was generated from
GENERATED = "generated.json"


def generated_dir(path: str | Path, recipe: dict, write: Callable[[Path], object]) -> Path:
    """A generated data folder: ``write(tmp)`` fills it from ``recipe`` (generator, version, count,
    seed, size, ...), which is recorded in its ``generated.json``. An existing folder is reused only
    when its record is the same recipe; otherwise it is generated anew under a temporary name and
    swapped in, so changed settings never train or evaluate on old data, and a reader never sees
    half a folder.

    Args:
        path: the generated folder.
        recipe: what the folder is made from, JSON-serialisable.
        write: fills the temporary directory it is given (its return value is ignored).
    """
    path = Path(path)
    if generated_from(path) == json.loads(json.dumps(recipe)):
        return path
    with atomic_dir(path) as tmp:
        write(tmp)
        (tmp / GENERATED).write_text(json.dumps(recipe, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return path


def generated_from(path: str | Path) -> dict | None:
    """The recipe recorded in a generated folder, or None (absent, not generated here, or unreadable)."""
    record = Path(path) / GENERATED
    try:
        return json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
