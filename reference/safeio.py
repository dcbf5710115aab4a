"""Safe file writes, shared by both backends (pure I/O, no arrays).

Every byte twinsparse writes goes through ``write_all``, and every flush to disk through
``fsync``. The fault-injection tests (tests/test_faults.py) replace these two functions to
simulate a full disk, an I/O error or a kill in the middle of a write.

``write_atomic(path, data)`` writes a whole file so that a reader only ever sees the old content
or the new content, never a mixture:

1. the data goes to a temporary file ``.<name>.<random>.tmp`` in the same folder,
2. the temporary file is flushed to disk (``fsync``),
3. it is renamed over ``path`` (``os.replace`` is atomic on POSIX),
4. the folder is flushed so that the rename itself survives a power cut.

A failure at any step removes the temporary file and leaves ``path`` as it was. The error is an
``OSError`` with the original errno whose message names ``path``. A kill leaves at most a
temporary file, which ``remove_stale_temps`` deletes at the next start of a run in that folder.
"""
from __future__ import annotations

import errno as _errno
import os
import re
import tempfile

TMP_SUFFIX = ".tmp"
_LEGACY_TMP_PREFIX = ".ckpt-"   # temporary checkpoints of older versions (no suffix)
_TMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")   # ".<name>." + mkstemp's 8 random characters + ".tmp"


def write_all(fd: int, data, path: str) -> None:
    """Write every byte of ``data`` to ``fd`` (``path`` is the file being written, for messages
    and for the fault-injection tests)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def fsync(fd: int, path: str) -> None:
    """Flush ``fd`` (the file ``path``) to disk."""
    os.fsync(fd)


def io_error(e: OSError, action: str, path: str, note: str = "") -> OSError:
    """``e`` re-raised as an OSError with the same errno whose message names ``path``."""
    reason = e.strerror or str(e) or type(e).__name__
    code = e.errno if e.errno is not None else _errno.EIO
    return OSError(code, f"{action} {path} failed: {reason}{note}")


def fsync_dir(folder: str) -> None:
    """Flush a folder's entries (a rename in it) to disk; a no-op where folders cannot be opened."""
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


def temp_prefix(path: str) -> str:
    return f".{os.path.basename(path)}."


def write_atomic(path: str, data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically (see the module docstring)."""
    write_atomic_group({path: data})


def write_atomic_group(files: dict) -> None:
    """Replace several files ({path: bytes}) together: every one is written to its temporary file
    and flushed first, and only then are they renamed, so a failing write replaces none of them."""
    staged = []   # (temporary file, path)

    def clean():
        for tmp, _ in staged:
            try:
                os.remove(tmp)
            except OSError:
                pass
    try:
        for path, data in files.items():
            path = str(path)
            folder = os.path.dirname(os.path.abspath(path))
            try:
                os.makedirs(folder, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=TMP_SUFFIX, dir=folder)
            except OSError as e:
                raise io_error(e, "writing", path, f" (could not create a temporary file in {folder})") from e
            staged.append((tmp, path))
            try:
                try:
                    write_all(fd, data, path)
                    fsync(fd, path)
                finally:
                    os.close(fd)
            except OSError as e:
                note = "; the previous file is unchanged" if os.path.exists(path) else "; nothing was written"
                raise io_error(e, "writing", path, note) from e
        for i, (tmp, path) in enumerate(staged):
            try:
                os.replace(tmp, path)
            except OSError as e:
                staged = staged[i:]
                raise io_error(e, "writing", path, " (renaming its temporary file)") from e
    except BaseException:
        clean()
        raise
    for folder in {os.path.dirname(os.path.abspath(p)) for _, p in staged}:
        fsync_dir(folder)


def is_stale_temp(name: str) -> bool:
    """A temporary file left by ``write_atomic`` (or by older versions) when it was killed."""
    return name.startswith(_LEGACY_TMP_PREFIX) or _TMP_NAME.fullmatch(name) is not None


def remove_stale_temps(folder: str) -> list:
    """Delete the temporary files a killed write left in ``folder``; returns their paths. Call it
    only while holding the folder's lock (no other writer can be in the middle of a write)."""
    removed = []
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return removed
    for name in names:
        p = os.path.join(folder, name)
        if is_stale_temp(name) and os.path.isfile(p):
            try:
                os.remove(p)
            except FileNotFoundError:
                continue
            except OSError as e:
                raise io_error(e, "removing the stale temporary file", p) from e
            removed.append(p)
    return removed
