"""Resumable stages of the multi-phase procedures (D²-Sparse, IMP, AC/DC, CrAM, Sparse Cocktail),
shared by both backends: pure bookkeeping, the arrays are whatever the engine returns.

A procedure is deterministic given its config: every seed derives from (seed, phase keys), views
from (phase, epoch), and each phase starts from the outputs of earlier ones. So a procedure is
made resumable by *memoising its stages*:

    result = stages.stage("state-3", lambda: ...)     # runs once; on resume, the saved result

- A stage's result and the *events* it produced (records for the log, mask-update logs) are
  written atomically to the procedure checkpoint when it completes; on resume a completed stage
  is not run again: its events are replayed (the same records, with their original times) and its
  result returned.
- Stages nest: a child's key is its parent's key plus its own name. When a parent completes, its
  children's entries are dropped, so the checkpoint holds the completed top-level stages and the
  children of the one in progress, not every phase ever trained.
- The training loop inside a stage keeps its own per-epoch checkpoint (``train_kw`` /
  ``progress``) in ``<checkpoint>.stage-<key>``, removed when the stage completes. An interrupted
  run resumes at the last finished epoch of the stage in progress.

Code between stages is run again on resume; it must be deterministic (it is: mask draws, merges,
SNIP and evaluations are pure functions of their inputs). The resumed run therefore ends with the
same masks and weights as the uninterrupted one (tests/test_procedure_resume.py).
"""
from __future__ import annotations

import glob
import os
import re

from .checkpoint import CheckpointError, check_config


class Progress:
    """The per-epoch checkpoint of a custom training loop inside a stage (Sparse Cocktail's
    co-training): ``load()`` -> the saved payload or None, ``save(payload)`` atomically. A no-op
    when the procedure is not checkpointed."""

    def __init__(self, path, io, config, writer: bool = True):
        self.path, self.io, self.config, self.writer = path, io, config, writer

    def load(self):
        if self.path is None or not os.path.exists(self.path):
            return None
        payload = self.io[1](self.path)
        if "progress" not in payload:
            raise CheckpointError(f"{self.path} is not the progress file of a procedure stage")
        check_config(payload["config"], self.config, self.path)
        return payload["progress"]

    def save(self, progress) -> None:
        if self.path is not None and self.writer:
            self.io[0](self.path, {"config": self.config, "progress": progress})


class Stages(list):
    """The records of a procedure (a list; ``emit`` appends one and passes it to ``on_record``),
    its mask-update log (``updates``; ``add_updates``) and its resumable stages (``stage``).

    ``path``: the procedure checkpoint (None: nothing is saved, stages simply run); ``config``:
    the run's resolved config (a dict), a checkpoint resumes only the run that wrote it; ``resume``:
    continue from ``path`` when it exists (otherwise a fresh start that replaces it); ``io``:
    (save(path, payload), load(path)) of the backend; ``writer``: False on DDP ranks > 0, which
    read checkpoints but never write them."""

    def __init__(self, on_record=None, path: str | None = None, config: dict | None = None, resume: bool = False,
                 io=None, writer: bool = True):
        super().__init__()
        if path is not None and io is None:
            raise ValueError("a procedure checkpoint path needs the backend's io=(save, load)")
        self.on_record, self.path, self.config, self.io, self.writer = on_record, path, config, io, writer
        self.updates: list = []
        self.resumed: list = []          # keys of the stages restored from the checkpoint
        self._done: dict = {}            # full key -> (result, events)
        self._open: list = []            # [(full key, events)] of the running stages, outermost first
        if path is None:
            return
        if resume and os.path.exists(path):
            payload = io[1](path)
            if "stages" not in payload:
                raise CheckpointError(f"{path} is the checkpoint of a single training run, not of a multi-phase "
                                      f"procedure (procedure={config.get('procedure')!r})")
            check_config(payload["config"], config, path)
            self._done = payload["stages"]
            if writer:  # a crash between saving a stage and removing its progress file leaves one behind
                for key in self._done:
                    self._remove_progress(key)
        elif writer:  # a fresh start: progress files of an earlier run must not be picked up
            for stale in glob.glob(glob.escape(path) + ".stage-*"):
                os.remove(stale)

    @classmethod
    def attach(cls, stages, on_record=None) -> "Stages":
        """``stages`` (with ``on_record`` added when it has none), or a fresh non-checkpointed one."""
        if stages is None:
            return cls(on_record)
        if on_record is not None:
            if stages.on_record is not None and stages.on_record is not on_record:
                raise ValueError("pass on_record to Stages or to the procedure, not both")
            stages.on_record = on_record
        return stages

    # ----------------------------------------------------------------------------- events
    def emit(self, rec: dict) -> None:
        """One record of the procedure (a state / iteration / phase)."""
        self._event(("record", rec))

    def add_updates(self, updates) -> None:
        """Mask-update log lines of a training phase."""
        self._event(("updates", list(updates)))

    def _event(self, ev) -> None:
        for _, events in self._open:
            events.append(ev)
        kind, x = ev
        if kind == "record":
            self.append(x)
            if self.on_record is not None:
                self.on_record(x)
        else:
            self.updates.extend(x)

    # ----------------------------------------------------------------------------- stages
    def _key(self, name) -> tuple:
        if not isinstance(name, (str, int)) or isinstance(name, bool) or not re.fullmatch(r"[A-Za-z0-9_]+", str(name)):
            raise ValueError(f"stage name {name!r} must be a str or int of letters, digits and '_'")
        return (*(self._open[-1][0] if self._open else ()), str(name))

    def stage(self, name, fn):
        """Run ``fn()`` as the stage ``name`` (inside the running stage, if any) once: a stage
        completed before the interruption replays its events and returns its saved result."""
        key = self._key(name)
        if key in self._done:
            result, events = self._done[key]
            self.resumed.append(key)
            for ev in events:
                self._event(ev)
            return result
        self._open.append((key, []))
        try:
            result = fn()
        finally:
            _, events = self._open.pop()
        self._done = {k: v for k, v in self._done.items() if k[:len(key)] != key}
        self._done[key] = (result, events)
        if self.path is not None and self.writer:
            self.io[0](self.path, {"config": self.config, "procedure": self.config.get("procedure"),
                                   "stages": self._done})
            self._remove_progress(key)
        return result

    def _remove_progress(self, key) -> None:
        prefix = self._file(key)
        for f in [prefix, *glob.glob(glob.escape(prefix) + "-*")]:
            if os.path.exists(f):
                os.remove(f)

    def _file(self, key) -> str:
        return f"{self.path}.stage-{'-'.join(key)}"

    def train_kw(self, name) -> dict:
        """Keyword arguments of a training loop run as the child stage ``name`` of the running one
        (``checkpoint`` / ``resume``); empty when the procedure is not checkpointed."""
        if self.path is None:
            return {}
        return {"checkpoint": self._file(self._key(name)), "resume": True}

    def train(self, name, fn):
        """``stage(name, lambda: fn(**train_kw(name)))``: a training loop that checkpoints its epochs."""
        kw = self.train_kw(name)
        return self.stage(name, lambda: fn(**kw))

    def progress(self) -> Progress:
        """The per-epoch progress file of the running stage, for a custom training loop."""
        if not self._open:
            raise RuntimeError("progress() is only available inside a stage")
        path = None if self.path is None else self._file(self._open[-1][0]) + "-progress"
        return Progress(path, self.io, self.config, self.writer)
