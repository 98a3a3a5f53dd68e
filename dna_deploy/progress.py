"""Progress bars for long work (rich); silent when disabled, e.g. in tests or --format json."""

from __future__ import annotations

import contextlib

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


@contextlib.contextmanager
def progress_bar(enabled: bool = True):
    if not enabled:
        yield _Null()
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), transient=False) as p:
        yield _Rich(p)


class _Rich:
    def __init__(self, p: Progress):
        self.p = p

    def task(self, description: str, total: int | None):
        return self.p.add_task(description, total=total, info="")

    def advance(self, task, n: int = 1, info: str | None = None):
        kw = {"info": info} if info is not None else {}
        self.p.update(task, advance=n, **kw)

    def update(self, task, **kw):
        if "info" in kw:
            kw["info"] = str(kw["info"])
        self.p.update(task, **kw)


class _Null:
    def task(self, description, total):
        return None

    def advance(self, task, n=1, info=None):
        pass

    def update(self, task, **kw):
        pass
