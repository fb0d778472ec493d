"""The VM state machine: one transition table, the only place a VM's state is set.

`Lifecycle.apply(vm, event, reason)` looks up (state, event) in `TRANSITIONS`, writes the new
state through the repository and logs the transition with its reason; a reason of a transition
into `error` is kept in the record (`error`, what `vm show` prints). An event the table does not
allow from the VM's state is refused with the domain error naming that state.

paused/suspended: the snapshot work (issue 14) drives them through PAUSE/RESUME/SUSPEND/RESTORE.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from banger.errors import Conflict, NotRunning
from banger.vmm.base import VMHandle
from banger.vms.repository import VMRepository
from banger.vms.spec import VMRecord, VMState

log = logging.getLogger("banger.vms")


class Event(enum.Enum):
    # A boot launched the VMM (the guest is not ready yet): the VM runs from here on.
    LAUNCHED = "launched"
    # A boot failed at some stage (before or after the launch); the reason says where and why.
    BOOT_FAILED = "boot_failed"
    # A boot was cancelled (its VMM, if any, is stopped).
    BOOT_CANCELLED = "boot_cancelled"
    # banger stopped the VMM (graceful power-off, forced after a timeout, or a fatal signal).
    STOPPED = "stopped"
    # The VMM went away on its own (the guest powered off, someone killed it).
    EXITED = "exited"
    # The VMM went away and the console says the boot or the guest failed.
    CRASHED = "crashed"
    # bangerd died during this VM's create; the restart stopped what it had launched.
    INTERRUPTED = "interrupted"
    # Sizes changed while the VM does not run (a self-transition: only allowed when not running).
    RECONFIGURED = "reconfigured"
    # Capability.PAUSE: freeze / thaw the vCPUs, the VMM stays.
    PAUSE = "pause"
    RESUME = "resume"
    # Capability.SUSPEND: machine saved to disk, the VMM exits; RESTORE brings it back running.
    SUSPEND = "suspend"
    RESTORE = "restore"
    # `vm stop` / `vm delete` of a suspended VM: its saved state (the suspend image) is dropped.
    DISCARDED = "discarded"


_NOT_RUNNING: tuple[VMState, ...] = ("created", "stopped", "error")
_ALL: tuple[VMState, ...] = ("created", "running", "paused", "suspended", "stopped", "error")


def _table() -> dict[tuple[VMState, Event], VMState]:
    t: dict[tuple[VMState, Event], VMState] = {}

    def add(sources: tuple[VMState, ...], event: Event, to: VMState | None) -> None:
        for s in sources:
            t[(s, event)] = to if to is not None else s

    add(_NOT_RUNNING, Event.LAUNCHED, "running")
    # A boot sets `running` at its launch, so its failure or cancel may come from there too.
    add((*_NOT_RUNNING, "running"), Event.BOOT_FAILED, "error")
    add((*_NOT_RUNNING, "running"), Event.BOOT_CANCELLED, "stopped")
    add(("running", "paused"), Event.STOPPED, "stopped")
    add(("running", "paused"), Event.EXITED, "stopped")
    add(("running", "paused"), Event.CRASHED, "error")
    add(_ALL, Event.INTERRUPTED, "error")
    add(_NOT_RUNNING, Event.RECONFIGURED, None)
    add(("running",), Event.PAUSE, "paused")
    add(("paused",), Event.RESUME, "running")
    add(("running", "paused"), Event.SUSPEND, "suspended")
    add(("suspended",), Event.RESTORE, "running")
    add(("suspended",), Event.DISCARDED, "stopped")
    return t


TRANSITIONS: dict[tuple[VMState, Event], VMState] = _table()

# Events that need a live VMM: refused with NotRunning (wire `not_running`), not Conflict.
_NEEDS_RUNNING = {Event.STOPPED, Event.PAUSE, Event.SUSPEND}


def refusal(vm: VMRecord, event: Event) -> Conflict | NotRunning:
    """The error for an event the table does not allow in the VM's state (says which state)."""
    name, state = vm.name, vm.state
    if event is Event.PAUSE and state == "paused":
        return Conflict(f"vm {name} is already paused")
    if event is Event.SUSPEND and state == "suspended":
        return Conflict(f"vm {name} is already suspended")
    if event in _NEEDS_RUNNING and state not in ("running", "paused"):
        return NotRunning(f"vm {name} is not running (state {state})")
    if event is Event.LAUNCHED and state == "paused":
        return Conflict(f"vm {name} is paused: resume it instead (its VMM is running)")
    if event is Event.LAUNCHED and state == "running":
        return Conflict(f"vm {name} is already running")
    if event is Event.RECONFIGURED and state in ("running", "paused"):
        return Conflict(f"vm {name} is {state}; stop it first, change it, then start it again")
    if event is Event.RESUME and state == "suspended":
        return Conflict(f"vm {name} is suspended (saved to disk), not paused: start it to resume")
    if event is Event.RESUME:
        return Conflict(f"vm {name} is {state}, not paused")
    if event is Event.RESTORE:
        return Conflict(f"vm {name} is {state}, not suspended")
    return Conflict(f"vm {name} is {state}; it cannot be {event.value} from there")


@dataclass(frozen=True)
class Transition:
    vm_id: str
    source: VMState
    event: Event
    target: VMState
    reason: str | None


class Lifecycle:
    """Applies the table to stored VMs (the repository's `set_state` has no other caller)."""

    def __init__(self, repo: VMRepository) -> None:
        self._repo = repo

    @staticmethod
    def check(vm: VMRecord, event: Event) -> VMState:
        """The state `event` would lead to; the refusal when it is not allowed now."""
        target = TRANSITIONS.get((vm.state, event))
        if target is None:
            raise refusal(vm, event)
        return target

    def apply(
        self,
        vm_id: str,
        event: Event,
        reason: str | None = None,
        *,
        handle: VMHandle | None = None,
    ) -> Transition:
        """Move the stored VM along `event`. `handle` is the launched VMM's (LAUNCHED, RESTORE);
        a running or paused VM keeps its handle, every other state drops it."""
        vm = self._repo.get(vm_id)
        target = self.check(vm, event)
        if target in ("running", "paused"):
            keep = handle if handle is not None else self._repo.handle(vm_id)
        else:
            keep = None
        started = event in (Event.LAUNCHED, Event.RESTORE)
        self._repo.set_state(
            vm_id,
            target,
            error=reason if target == "error" else None,
            handle=keep,
            started=started,
        )
        log.info(
            "vm state",
            extra={
                "vm": vm.name,
                "from": vm.state,
                "to": target,
                "event": event.value,
                "reason": reason or "",
            },
        )
        return Transition(vm_id, vm.state, event, target, reason)
