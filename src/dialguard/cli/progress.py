"""The progress bar of the commands that stream a file (import, scrub)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

__all__ = ["Bar"]


class Bar:
    """A rich bar on stderr with rows/s and the time left (importing.Progress,
    scrub.Progress); nothing when stderr is not a terminal."""

    def __init__(self) -> None:
        console = Console(stderr=True)
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=console,
            disable=not console.is_terminal,
            transient=True,
        )
        self._task: Any = None

    def start(self, label: str, total_bytes: int) -> None:
        if self._task is None:
            self._progress.start()
        else:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(label, total=total_bytes, rate="")

    def advance(self, position: int, rows: int, seconds: float) -> None:
        rate = f"{rows / max(seconds, 1e-6):,.0f} rows/s"
        self._progress.update(self._task, completed=position, rate=rate)

    def finish(self) -> None:
        self._progress.stop()
