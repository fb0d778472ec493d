"""Progress display on stderr for the daemon's progress lines: rich on a terminal, plain lines
when piped. rich is imported only when a terminal needs it (`banger --version` stays fast)."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

from banger.cli.output import dim

if TYPE_CHECKING:
    from banger.rpc.client import Interrupted


def transfer_bars(*, transient: bool) -> Any:
    """A rich Progress on stderr with description, bar, bytes and speed columns (not started)."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=Console(stderr=True),
        transient=transient,
    )


class Stages:
    """VM create/start stages: a rich spinner line on a TTY, one plain line per stage otherwise.

    `name` is the VM's name as soon as the daemon's `spec` line names it (a failed create can
    then point at the VM it kept).
    """

    LABELS = {
        "resolve": "resolving image and kernel",
        "disks": "preparing disks",
        "boot": "booting",
        "wait_guest": "waiting for the guest",
        "wait_ssh": "waiting for SSH",
        "stop": "stopping",
        "save": "saving RAM and disks",
        "seed": "keeping the seed disk",
        "suspend": "saving RAM and device state",
    }

    def __init__(self, name: str | None = None) -> None:
        self.name = name
        # True once the daemon named the VM it is creating: only then can a failure have left
        # *this create's* VM behind (a --name that already exists is someone else's VM).
        self.spec_seen = False
        self.started = time.monotonic()
        self.status: Any = None
        self.last = ""
        if sys.stderr.isatty():
            from rich.console import Console

            self.console = Console(stderr=True)
            self.status = self.console.status("starting")
            self.status.start()

    def __call__(self, ev: dict[str, Any]) -> None:
        stage = str(ev.get("stage", ""))
        if stage == "spec":
            detail = str(ev.get("detail", ""))
            self.name = self.name or detail.split(":", 1)[0]
            self.spec_seen = True
            self._print(f"spec: {detail}")
            return
        label = self.LABELS.get(stage)
        if label is None:
            # image build / kernel import progress from ensure(): show its message as detail
            msg = ev.get("message") or ev.get("detail") or ""
            if msg and self.status is not None:
                self.status.update(f"{self.last} {dim(str(msg)[:60])}")
            return
        cur, total = ev.get("current"), ev.get("total")
        counter = f"[{cur}/{total}] " if cur and total else ""
        self.last = f"{counter}{label}"
        if self.status is not None:
            self.status.update(self.last)
        else:
            print(self.last, file=sys.stderr)

    def _print(self, text: str) -> None:
        if self.status is not None:
            self.console.print(text)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None

    def interrupted(self, e: Interrupted) -> str:
        """The line for Ctrl-C during a create: what exists now (see rpc.client.Interrupted)."""
        vm = f"vm {self.name}" if self.name else "the VM"
        if e.completed:
            return f"interrupted after {vm} was ready; it runs (`banger vm delete` removes it)"
        if e.cleaned:
            return (
                f"interrupted: {vm} was not created (the daemon cancelled it; no process, "
                "disks or record are left)"
            )
        return (
            f"interrupted: the daemon is still cancelling the create of {vm}; "
            "`banger vm list` shows when it is gone"
        )

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def __enter__(self) -> Stages:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
