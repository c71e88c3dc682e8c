"""The exceptions the CLI turns into one line and an exit status (cli.main).

UserError: bad input (a path, a file, an option), exit 2; Stopped: SIGTERM or SIGINT ended
a training run after saving a checkpoint, exit 128 + signal; Unhealthy: the health checks
stopped a run that diverged (train.py turns it into a UserError naming the checkpoint).
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .health import HealthEvent


class UserError(Exception):
    """Bad input from the user (a path, a file, an option): the message names it."""


class Stopped(Exception):
    """SIGTERM or SIGINT arrived: a checkpoint was saved and the run ended cleanly."""

    def __init__(self, signum: int, checkpoint: Path) -> None:
        self.signum, self.checkpoint = signum, checkpoint
        super().__init__(
            f"stopped by {signal.Signals(signum).name}; checkpoint {checkpoint} (continue with --resume {checkpoint})"
        )


class Unhealthy(RuntimeError):
    """The health monitor stopped the run (it diverged); `event` (a health.HealthEvent)
    says how and where."""

    def __init__(self, event: HealthEvent) -> None:
        self.event = event
        super().__init__(event.message)
