"""Progress for long work: rich bars on a terminal, periodic plain log lines otherwise (a job piped
into a log file or run by a scheduler sees no bars: a 9-minute rating once printed nothing), and
silence when disabled (tests, --format json).

Log lines go to stderr every `DNA_DEPLOY_LOG_EVERY` seconds (default 30), e.g.
`[progress] block 2: 1200/5000 (24.0%) 3.1 steps/s 198 img/s ETA 0:20:26 | epoch 1 loss 0.412`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import sys
import time

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def _is_terminal() -> bool:
    forced = os.environ.get("DNA_DEPLOY_PROGRESS")  # "bar" or "log" overrides the detection
    if forced in ("bar", "log"):
        return forced == "bar"
    return sys.stderr.isatty()


@contextlib.contextmanager
def progress_bar(enabled: bool = True):
    if not enabled:
        yield _Null()
        return
    if not _is_terminal():
        yield _Log(float(os.environ.get("DNA_DEPLOY_LOG_EVERY", "30")))
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), transient=False) as p:
        yield _Rich(p)


class _Rich:
    def __init__(self, p: Progress):
        self.p = p

    def task(self, description: str, total: int | None, completed: int = 0):
        return self.p.add_task(description, total=total, completed=completed, info="")

    def advance(self, task, n: int = 1, info: str | None = None, images: int = 0):
        kw = {"info": info} if info is not None else {}
        self.p.update(task, advance=n, **kw)

    def update(self, task, **kw):
        if "info" in kw:
            kw["info"] = str(kw["info"])
        self.p.update(task, **kw)


class _LogTask:
    def __init__(self, description: str, total: int | None, completed: int):
        self.description, self.total = description, total
        self.done = self.base = completed  # steps restored on resume are not part of this run's rate
        self.images = 0
        self.info = ""
        self.t0 = self.last = time.monotonic()


class _Log:
    """Plain lines: rate, images/s and ETA, at most one per task every `every` seconds, plus one
    when a task completes."""

    def __init__(self, every: float):
        self.every = every

    def task(self, description: str, total: int | None, completed: int = 0):
        return _LogTask(description, total, completed)

    def advance(self, task: _LogTask, n: int = 1, info: str | None = None, images: int = 0):
        task.done += n
        task.images += images
        if info is not None:
            task.info = info
        now = time.monotonic()
        finished = task.total is not None and task.done >= task.total
        if now - task.last >= self.every or finished:
            task.last = now
            self._line(task, now)

    def update(self, task: _LogTask, **kw):
        if "info" in kw:
            task.info = str(kw["info"])
        if "total" in kw:
            task.total = kw["total"]

    @staticmethod
    def _line(task: _LogTask, now: float) -> None:
        elapsed = max(now - task.t0, 1e-9)
        rate = (task.done - task.base) / elapsed
        parts = [f"[progress] {task.description}: {task.done}"]
        if task.total:
            parts[0] += f"/{task.total} ({100 * task.done / task.total:.1f}%)"
        parts.append(f"{rate:.2f} steps/s")
        if task.images:
            parts.append(f"{task.images / elapsed:.0f} img/s")
        if task.total and rate > 0:
            parts.append(f"ETA {_dt.timedelta(seconds=round((task.total - task.done) / rate))}")
        line = " ".join(parts) + (f" | {task.info}" if task.info else "")
        print(line, file=sys.stderr, flush=True)


class _Null:
    def task(self, description, total, completed=0):
        return None

    def advance(self, task, n=1, info=None, images=0):
        pass

    def update(self, task, **kw):
        pass
