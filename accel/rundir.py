"""The output folder of an experiment, handled as a transaction (used by ``accel.runner``).

- ``RunLock``: an advisory ``fcntl.flock`` on ``<folder>/.twinsparse.lock``, held for the whole
  experiment. A second writer fails at once with an error naming the folder and the process that
  holds it. The kernel drops the lock when its holder dies (even by ``kill -9``), so a lock file
  left behind is recognised as stale and taken over.
- ``RunLog``: the JSON-lines log of one run. A fresh log is created; a resumed one is appended to,
  never truncated: the records it already holds are kept as they are, and records the resumed
  run emits again are not written twice.
- ``read_log``: a log's records, with a clear error naming the file and line when it is damaged.
- ``default_output``: a fresh folder for a run started without ``--output``.

Every write goes through ``reference.safeio`` (one place to inject faults in the tests), and every
I/O error names the file.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import socket
import sys
import time
import warnings

from twinsparse.reference import safeio

LOCK_NAME = ".twinsparse.lock"
TIME_KEYS = ("epoch_time", "time_s")   # what a resumed run may legitimately change in a record


class RunDirectoryError(RuntimeError):
    """The output folder cannot be used: another writer holds it, or it holds an earlier run."""


# ----------------------------------------------------------------------------- the lock
class RunLock:
    """``with RunLock(folder):`` -- exclusive use of ``folder`` by this process (advisory)."""

    def __init__(self, folder: str):
        self.folder = str(folder)
        self.path = os.path.join(self.folder, LOCK_NAME)
        self.fd = None
        self.stale = None   # what a stale lock file said about its dead holder, if there was one

    def acquire(self) -> "RunLock":
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            except OSError as e:
                raise safeio.io_error(e, "creating the lock file", self.path) from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = _read_fd(fd)
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise RunDirectoryError(
                        f"output folder {self.folder} is in use by another twinsparse process ({_describe(holder)}); "
                        f"two runs must not write one folder: wait for it to finish or choose another --output") \
                        from None
                raise safeio.io_error(e, "locking", self.path, " (file locks are not supported here?)") from e
            try:  # the file may have been removed by its previous holder between our open and our lock
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            previous = _read_fd(fd)
            info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "command": " ".join(sys.argv)[:300]}
            try:
                os.ftruncate(fd, 0)
                safeio.write_all(fd, (json.dumps(info) + "\n").encode(), self.path)
            except OSError as e:
                os.close(fd)
                raise safeio.io_error(e, "writing", self.path) from e
            self.fd = fd
            if previous:
                self.stale = previous
                warnings.warn(f"took over the stale lock of {self.folder} ({_describe(previous)}, no longer running): "
                              f"that run was interrupted", RuntimeWarning, stacklevel=2)
            return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.remove(self.path)      # while still holding it: a waiting writer re-checks the inode
        except OSError:
            pass
        os.close(self.fd)             # closing drops the flock
        self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _read_fd(fd) -> dict | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 4096)
    except OSError:
        return None
    if not raw.strip():
        return None
    try:
        info = json.loads(raw.decode("utf-8", "replace"))
        return info if isinstance(info, dict) else {"unreadable": raw[:80]}
    except ValueError:
        return {"unreadable": raw[:80]}


def _describe(info) -> str:
    if not info:
        return "holder unknown"
    if "unreadable" in info:
        return f"lock file content unreadable: {info['unreadable']!r}"
    return (f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')}, "
            f"command: {info.get('command') or '?'}")


# ----------------------------------------------------------------------------- folders
def default_output(base: str, resume: bool) -> str:
    """The folder of a run started without ``--output``: ``base`` when it holds nothing yet, else
    the first free ``base-2``, ``base-3``, ... (a new run never lands in an earlier run's folder).
    With ``resume``: the most recent of them that exists (the run to continue)."""
    base = os.path.normpath(base)
    candidates = [base]
    parent, stem = os.path.split(base)
    pattern = re.compile(re.escape(stem) + r"-(\d+)")
    try:
        numbered = sorted((int(m.group(1)), n) for n in os.listdir(parent or ".") if (m := pattern.fullmatch(n)))
    except FileNotFoundError:
        numbered = []
    candidates += [os.path.join(parent, n) for _, n in numbered]
    used = [c for c in candidates if os.path.isdir(c) and os.listdir(c)]
    if resume:
        return used[-1] if used else base
    if base not in used:
        return base
    top = max([1] + [k for k, _ in numbered])
    return f"{base}-{top + 1}"


def stage_files(ck_path: str) -> list:
    folder, base = os.path.split(ck_path)
    try:
        names = os.listdir(folder or ".")
    except FileNotFoundError:
        return []
    return sorted(os.path.join(folder, n) for n in names if n.startswith(base + ".stage-"))


# ----------------------------------------------------------------------------- the log
def canonical(rec) -> str:
    """A record as it compares across a resume: its JSON form without the timing keys."""
    rec = json.loads(json.dumps(rec))
    if isinstance(rec, dict):
        rec = {k: v for k, v in rec.items() if k not in TIME_KEYS}
    return json.dumps(rec, sort_keys=True)


def read_log(path: str) -> tuple[list, int, int]:
    """(records, bytes of complete lines, bytes of an incomplete last line) of a JSON-lines log.
    A damaged complete line is an error naming the file and the line."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise safeio.io_error(e, "reading the log", path) from e
    cut = data.rfind(b"\n") + 1
    records = []
    for i, line in enumerate(data[:cut].split(b"\n")[:-1], 1):
        try:
            records.append(json.loads(line.decode("utf-8")))
        except ValueError as e:
            raise RunDirectoryError(f"log {path} is damaged at line {i} ({type(e).__name__}: {e}); the run cannot be "
                                    f"resumed on top of it: move it away or start afresh with --overwrite") from None
    return records, cut, len(data) - cut


class RunLog:
    """The JSON-lines log of one run: one record per line, each written with a single write and
    flushed to disk. ``resume``: keep the existing file and append; a record the log already holds
    at that position (the same values, times aside) is not written again."""

    def __init__(self, path: str, resume: bool = False):
        self.path = path
        self.kept: list = []
        self.pos = 0
        self.fd = None
        tail = 0
        if resume and os.path.exists(path):
            records, good, tail = read_log(path)
            self.kept = [canonical(r) for r in records]
        flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | (0 if resume else os.O_TRUNC)
        try:
            self.fd = os.open(path, flags, 0o644)
            if tail:  # an incomplete last line (a kill in the middle of writing it): not a record
                os.ftruncate(self.fd, good)
                warnings.warn(f"{path}: removed an incomplete last line ({tail} bytes) left by an interrupted write; "
                              f"the resumed run writes that record again", RuntimeWarning, stacklevel=2)
            self.size = os.lseek(self.fd, 0, os.SEEK_END)
        except OSError as e:
            self.close()
            raise safeio.io_error(e, "opening the log", path) from e

    def write(self, *records) -> None:
        out = []
        for rec in records:
            if self.pos < len(self.kept):
                if canonical(rec) == self.kept[self.pos]:
                    self.pos += 1
                    continue
                self._diverge("the resumed run produced a record that differs from the log's")
            out.append(json.dumps(rec) + "\n")
        if out:
            self._append("".join(out).encode("utf-8"))

    def _append(self, data: bytes) -> None:
        try:
            safeio.write_all(self.fd, data, self.path)
            safeio.fsync(self.fd, self.path)
        except OSError as e:
            try:  # drop what part of the failed write reached the file: the log stays whole lines
                os.ftruncate(self.fd, self.size)
                os.lseek(self.fd, self.size, os.SEEK_SET)
            except OSError:
                pass
            raise safeio.io_error(e, "appending to the log", self.path, "; its earlier records are intact") from e
        self.size += len(data)

    def _diverge(self, why: str) -> None:
        """The resumed run and the log disagree from record ``pos`` on (e.g. a non-deterministic GPU
        run): the old log is kept whole beside it, and the log continues with the run's records."""
        keep = self.path + f".before-resume-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            with open(self.path, "rb") as f:
                old = f.read()
        except OSError as e:
            raise safeio.io_error(e, "reading the log", self.path) from e
        safeio.write_atomic(keep, old)
        head = b"".join(old.splitlines(keepends=True)[:self.pos])
        try:
            os.ftruncate(self.fd, len(head))
            os.lseek(self.fd, len(head), os.SEEK_SET)
        except OSError as e:
            raise safeio.io_error(e, "rewinding the log", self.path) from e
        self.size = len(head)
        warnings.warn(f"{self.path}: {why} (record {self.pos + 1}); the previous log is kept whole as {keep}",
                      RuntimeWarning, stacklevel=3)
        self.kept = []

    def finish(self) -> None:
        """After a completed run: records of the old log that the run did not emit again are stale."""
        if self.pos < len(self.kept):
            self._diverge("the log holds records the resumed run did not produce")

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
