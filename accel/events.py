"""What a run writes as it trains, in time order: the JSON-lines log (``rundir.RunLog``), CSV files
that spreadsheets and pandas read, and TensorBoard scalars when tensorboard is installed.

Per run ``<stem>`` (``<output>/<label>_seed<seed>``):

* ``<stem>.jsonl``: the config header, then every event as it happens: ``{"mask_update": ...}``
  after the iteration that updated the masks, ``{"train_step": {t, epoch, loss, lr, density}}``
  every ``log_every`` iterations, and one record per epoch after the epoch's events.
* ``<stem>.csv``: one row per epoch, every scalar of the epoch record (nested dicts such as
  ``layer_density`` flattened to ``layer_density/<layer>``); ``<stem>.steps.csv``: one row per
  logged step; ``<stem>.updates.csv``: one row per mask update. Rewritten atomically after every
  epoch (``safeio.write_atomic``), so a kill leaves the previous version whole.
* ``<output>/tensorboard/<label>_seed<seed>/``: the same scalars through
  ``torch.utils.tensorboard.SummaryWriter`` (tags ``epoch/<key>``, ``step/<key>``,
  ``mask_update/<key>``, all against the iteration), when tensorboard is installed.

A resumed run replays the records of the epochs its checkpoint holds (each epoch record carries its
events), so the log and the CSV files come out as those of the uninterrupted run.
"""
from __future__ import annotations

import csv
import io
import os
import shutil

from twinsparse.reference import safeio


def run_paths(stem: str) -> dict:
    """The files and folder a run writes besides its log and checkpoint."""
    out, name = os.path.split(stem)
    return {"csv": stem + ".csv", "steps": stem + ".steps.csv", "updates": stem + ".updates.csv",
            "tensorboard": os.path.join(out, "tensorboard", name)}


def existing_outputs(stem: str) -> list:
    return [p for p in run_paths(stem).values() if os.path.exists(p)]


def remove_output(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def _summary_writer(logdir: str):
    """torch's SummaryWriter on ``logdir`` when tensorboard is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(logdir)


def flatten(rec: dict, prefix: str = "") -> dict:
    """The scalars of a record (numbers, strings, booleans), nested dicts joined with '/'."""
    out = {}
    for k, v in rec.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        elif v is None or isinstance(v, (bool, int, float, str)):
            out[key] = v
    return out


def csv_bytes(rows: list) -> bytes:
    """Rows (dicts) as CSV, the columns in order of first appearance."""
    cols: dict = {}
    for r in rows:
        for k in r:
            cols.setdefault(k, None)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(cols), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode("utf-8")


class RunEvents:
    """Routes a run's records to its log, CSV files and TensorBoard (see the module docstring).
    ``log``: a ``rundir.RunLog`` (or None on a non-writing DDP rank: then nothing is written)."""

    def __init__(self, log, stem: str):
        self.log = log
        self.paths = run_paths(stem) if log is not None else None
        self.rows = {"csv": [], "steps": [], "updates": []}
        self.tb = None
        self._tb_tried = False

    # -------------------------------------------------------------- the training loop's callbacks
    def event(self, ev: dict, live: bool = True) -> None:
        """A mask update or a logged step, as it happens (``live``) or replayed on resume."""
        if self.log is None:
            return
        self.log.write(ev)
        if "train_step" in ev:
            row = flatten(ev["train_step"])
            self.rows["steps"].append(row)
            self._scalars("step", row, row.get("t"), live)
        elif "mask_update" in ev:
            row = flatten(ev["mask_update"])
            self.rows["updates"].append(row)
            self._scalars("mask_update", row, row.get("t"), live)

    def record(self, rec: dict, live: bool = True) -> None:
        """The header or an epoch record (its ``events`` are written before it when replayed)."""
        if self.log is None:
            return
        if not live:
            for ev in rec.get("events", []):
                self.event(ev, live=False)
        self.log.write({k: v for k, v in rec.items() if k != "events"})
        if "epoch" in rec and "config" not in rec:
            row = flatten({k: v for k, v in rec.items() if k != "events"})
            self.rows["csv"].append(row)
            self._scalars("epoch", row, row.get("step", row.get("epoch")), live)
            if live:
                self.flush()

    def flush(self) -> None:
        """Rewrite the CSV files (atomically) from the rows so far."""
        if self.log is None:
            return
        for key, rows in self.rows.items():
            if rows:
                safeio.write_atomic(self.paths[key], csv_bytes(rows))
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None

    # -------------------------------------------------------------- TensorBoard
    def _scalars(self, group: str, row: dict, step, live: bool) -> None:
        if not live:               # replayed records are already in the event files
            return
        if not self._tb_tried:
            self._tb_tried = True
            self.tb = _summary_writer(self.paths["tensorboard"])
        if self.tb is None:
            return
        for k, v in row.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self.tb.add_scalar(f"{group}/{k}", v, global_step=int(step or 0))
