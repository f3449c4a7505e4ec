"""Rich progress bars and the console all commands print to."""

from __future__ import annotations

from typing import Iterator, Sequence, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# emoji=False: ":x:" in a server's error text stays text
console = Console(stderr=True, emoji=False)
T = TypeVar("T")


class _NullProgress:
    """Stands in for a progress bar when it is disabled (other DDP ranks, quiet mode)."""

    def __enter__(self) -> "_NullProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, *args: object, **kwargs: object) -> int:
        return 0

    def update(self, *args: object, **kwargs: object) -> None:
        return None


def make_progress(enabled: bool = True, loss: bool = True) -> Progress | _NullProgress:
    """A bar with step count, loss, speed, elapsed time and ETA."""
    if not enabled:
        return _NullProgress()
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
    if loss:
        columns.append(TextColumn("loss {task.fields[loss]:.4f}"))
    columns += [
        TextColumn("[cyan]{task.fields[speed]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]
    return _SpeedProgress(*columns, console=console, transient=False)


class _SpeedProgress(Progress):
    """Progress that also shows it/s (rich's speed is None until it has samples)."""

    def add_task(self, description: str, *args: object, **fields: object) -> int:  # type: ignore[override]
        fields.setdefault("loss", float("nan"))
        fields.setdefault("speed", "")
        return super().add_task(description, *args, **fields)

    def update(self, task_id: int, **kwargs: object) -> None:  # type: ignore[override]
        super().update(task_id, **kwargs)
        task = self._tasks[task_id]
        if task.speed:
            super().update(task_id, speed=f"{task.speed:.1f} it/s")


def track(items: Sequence[T], label: str, enabled: bool = True) -> Iterator[T]:
    """Iterate over ``items`` with a progress bar (no loss column)."""
    with make_progress(enabled, loss=False) as bar:
        task = bar.add_task(label, total=len(items))
        for item in items:
            yield item
            bar.update(task, advance=1)
