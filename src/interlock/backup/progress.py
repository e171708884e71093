"""How long work reports its progress: a stage at a time, with bytes done when known.

The command line shows a progress bar in a terminal and plain lines otherwise; a scheduled
job passes nothing and reports nothing. Calls may come from a worker thread.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def stage(self, description: str, total: int | None = None) -> None:
        """A new step begins; ``total`` bytes when its size is known."""
        ...

    def advance(self, amount: int) -> None:
        """``amount`` more bytes of the current step are done."""
        ...


class Silent:
    """Progress that goes nowhere."""

    def stage(self, description: str, total: int | None = None) -> None:
        return None

    def advance(self, amount: int) -> None:
        return None
