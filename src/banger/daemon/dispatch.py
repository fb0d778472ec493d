"""The RPC method table (one dict, method → handler) and the dispatch wrapper around it.

`RPC_HANDLERS` is the single source of truth for the methods banger speaks; tests pin it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from banger.daemon import (
    handlers_fork,
    handlers_images,
    handlers_kernels,
    handlers_network,
    handlers_pause,
    handlers_snapshots,
    handlers_system,
    handlers_vms,
)
from banger.daemon.handlers_remote import workspace_record
from banger.daemon.handlers_workspace import workspace_export, workspace_prepare
from banger.daemon.params import to_json
from banger.errors import BangerError
from banger.request import RequestContext, current_op_id
from banger.rpc import envelope, errmap
from banger.rpc.errors import RPCError, UnknownMethod
from banger.validation import MAX_MESSAGE_CHARS, clip, quote

if TYPE_CHECKING:
    from banger.daemon.app import Daemon

log = logging.getLogger("banger.dispatch")

Handler = Callable[["Daemon", RequestContext, dict[str, Any]], Awaitable[Any]]

RPC_HANDLERS: dict[str, Handler] = {
    "ping": handlers_system.ping,
    "shutdown": handlers_system.shutdown,
    "kernel.catalog": handlers_kernels.kernel_catalog,
    "kernel.list": handlers_kernels.kernel_list,
    "kernel.show": handlers_kernels.kernel_show,
    "kernel.pull": handlers_kernels.kernel_pull,
    "kernel.import": handlers_kernels.kernel_import,
    "kernel.delete": handlers_kernels.kernel_delete,
    "image.pull": handlers_images.image_pull,
    "image.list": handlers_images.image_list,
    "image.show": handlers_images.image_show,
    "image.delete": handlers_images.image_delete,
    "image.register": handlers_images.image_register,
    "image.promote": handlers_images.image_promote,
    "image.cache.prune": handlers_images.image_cache_prune,
    "vm.create": handlers_vms.vm_create,
    "vm.create.begin": handlers_vms.vm_create_begin,
    "vm.create.status": handlers_vms.vm_create_status,
    "vm.create.cancel": handlers_vms.vm_create_cancel,
    "vm.start": handlers_vms.vm_start,
    "vm.stop": handlers_vms.vm_stop,
    "vm.restart": handlers_vms.vm_restart,
    "vm.fork": handlers_fork.vm_fork,
    "vm.kill": handlers_vms.vm_kill,
    "vm.delete": handlers_vms.vm_delete,
    "vm.set": handlers_vms.vm_set,
    "vm.egress": handlers_vms.vm_egress,
    "vm.list": handlers_vms.vm_list,
    "vm.show": handlers_vms.vm_show,
    "vm.logs": handlers_vms.vm_logs,
    "vm.ssh": handlers_vms.vm_ssh,
    "vm.ping": handlers_network.vm_ping,
    "vm.health": handlers_network.vm_health,
    "vm.stats": handlers_network.vm_stats,
    "vm.ports": handlers_network.vm_ports,
    "vm.workspace.prepare": workspace_prepare,
    "vm.workspace.export": workspace_export,
    # Extensions beyond the seed's methods.
    "vm.workspace.record": workspace_record,
    # issue 14: checkpoints (vms/checkpoints.py)
    "vm.snapshot.create": handlers_snapshots.vm_snapshot_create,
    "vm.snapshot.list": handlers_snapshots.vm_snapshot_list,
    "vm.snapshot.restore": handlers_snapshots.vm_snapshot_restore,
    "vm.snapshot.delete": handlers_snapshots.vm_snapshot_delete,
    # issue 14: pause/resume, suspend (vms/suspend.py)
    "vm.pause": handlers_pause.vm_pause,
    "vm.resume": handlers_pause.vm_resume,
    "vm.suspend": handlers_pause.vm_suspend,
}

# Methods whose work must finish even when the client goes away: cancelling them half way would
# leave state a user has to clean up by hand. Every other method is cancelled on disconnect.
# `vm.suspend`: once QEMU has quit after writing the image, a cancel would discard the only copy
# of the guest's memory.
UNCANCELLABLE: frozenset[str] = frozenset({"shutdown", "vm.suspend"})

ProgressSink = Callable[[dict[str, Any]], None]


def _check_result(table: Mapping[str, Handler], method: str, wire: Any) -> None:
    # Imported here: building the result models costs a daemon that does not check ~30 ms.
    from banger.daemon import contract

    if table is RPC_HANDLERS or method in contract.CONTRACT:
        contract.check_result(method, wire)


async def dispatch(
    daemon: Daemon | None,
    raw: object,
    *,
    handlers: Mapping[str, Handler] | None = None,
    progress_sink: ProgressSink | None = None,
) -> dict[str, Any]:
    """Run one decoded request and return its response envelope. Never raises (but cancellation)."""
    table = RPC_HANDLERS if handlers is None else handlers
    op_id = envelope.new_op_id()
    method = "?"
    token = current_op_id.set(op_id)
    try:
        req = envelope.parse_request(raw)
        if req.op_id:
            op_id = req.op_id
            current_op_id.set(op_id)
        method = clip(req.method, 64)  # for messages and log lines; the table lookup uses req's
        handler = table.get(req.method)
        if handler is None:
            raise UnknownMethod(
                f"unknown method {quote(method)}; `banger --help` lists what exists"
            )
        sink = progress_sink if req.progress else None

        def emit(fields: dict[str, Any]) -> None:
            if sink is not None:
                sink({"progress": fields, "op_id": op_id})

        ctx = RequestContext(op_id=op_id, method=method, emit=emit)
        log.debug("request", extra={"method": method})
        try:
            result = await handler(daemon, ctx, req.params)  # type: ignore[arg-type]
        except RPCError:
            raise  # already a wire error (a privileged-helper answer, an unconverted path)
        except BangerError as domain_error:
            raise errmap.to_rpc(domain_error) from domain_error
        wire = to_json(result)
        # Tests run every daemon with BANGER_CHECK_RESULTS=1: a result off its schema fails.
        if os.environ.get("BANGER_CHECK_RESULTS") == "1":
            _check_result(table, req.method, wire)
        return envelope.ok(wire)
    except RPCError as e:
        # Service errors carry no op id of their own; stamp this request's on the way out.
        if not e.op_id:
            e.op_id = op_id
        # Whatever a service quoted, the answer and the log line stay small.
        message = clip(e.message, MAX_MESSAGE_CHARS)
        log.info("request failed", extra={"method": method, "code": e.code, "error": message})
        return envelope.error(e.code, message, e.op_id)
    except asyncio.CancelledError:
        log.info("request cancelled", extra={"method": method})
        raise
    except Exception as e:  # anything untyped is an operation failure with a useful message
        log.exception("request crashed", extra={"method": method})
        message = clip(str(e) or type(e).__name__, MAX_MESSAGE_CHARS)
        return envelope.error("operation_failed", f"{method}: {message}", op_id)
    finally:
        current_op_id.reset(token)
