"""The RPC as a published contract: per method, the model of its params and of its result.

`CONTRACT` is the one place a method's models are declared; `banger rpc schema` prints them as
JSON Schema (Draft 2020-12). Adding a method to `RPC_HANDLERS` means adding its entry here:
`tests/daemon/test_contract.py` fails for a method without one, and for a handler that parses
other params than its entry says.

With BANGER_CHECK_RESULTS=1 in its environment (the test suite sets it for every daemon it
starts) the daemon checks each result against its schema before sending it, and answers
`operation_failed` naming the mismatch instead. Without it, results are not checked: no cost.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from typing import Any

from pydantic import BaseModel

from banger.daemon import (
    handlers_fork,
    handlers_images,
    handlers_kernels,
    handlers_network,
    handlers_pause,
    handlers_remote,
    handlers_snapshots,
    handlers_system,
    handlers_vms,
    handlers_workspace,
)
from banger.daemon import results as r
from banger.daemon.params import Params
from banger.rpc.errors import OperationFailed
from banger.validation import clip

# Read by daemon/dispatch.py, which imports this module only when the variable is "1".
CHECK_RESULTS_ENV = "BANGER_CHECK_RESULTS"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


@dataclass(frozen=True)
class Method:
    params: type[Params]
    result: type[BaseModel]


_vms = handlers_vms
_images = handlers_images
_kernels = handlers_kernels
_net = handlers_network
_ws = handlers_workspace
_snap = handlers_snapshots

CONTRACT: dict[str, Method] = {
    "ping": Method(handlers_system._NoParams, r.Ping),
    "shutdown": Method(handlers_system._NoParams, r.Shutdown),
    "kernel.catalog": Method(Params, r.KernelCatalog),
    "kernel.list": Method(Params, r.KernelList),
    "kernel.show": Method(_kernels.NameParams, r.Kernel),
    "kernel.pull": Method(_kernels.PullParams, r.KernelInstalled),
    "kernel.import": Method(_kernels.ImportParams, r.KernelInstalled),
    "kernel.delete": Method(_kernels.NameParams, r.Kernel),
    "image.pull": Method(_images.PullParams, r.Image),
    "image.list": Method(_images.NoParams, r.ImageList),
    "image.show": Method(_images.RefParams, r.Image),
    "image.delete": Method(_images.RefParams, r.Image),
    "image.register": Method(_images.RegisterParams, r.Image),
    "image.promote": Method(_images.RefParams, r.Image),
    "image.cache.prune": Method(_images.PruneParams, r.CachePrune),
    "vm.create": Method(_vms.CreateParams, r.VM),
    "vm.create.begin": Method(_vms.CreateParams, r.Operation),
    "vm.create.status": Method(_vms.OpParams, r.Operation),
    "vm.create.cancel": Method(_vms.OpParams, r.Operation),
    "vm.start": Method(_vms.RefsParams, r.VMChange),
    "vm.stop": Method(_vms.StopParams, r.VMChange),
    "vm.restart": Method(_vms.RefsParams, r.VMChange),
    "vm.fork": Method(handlers_fork.ForkParams, r.Fork),
    "vm.kill": Method(_vms.KillParams, r.VMChange),
    "vm.delete": Method(_vms.RefsParams, r.VMChange),
    "vm.set": Method(_vms.SetParams, r.VMChange),
    "vm.list": Method(Params, r.VMList),
    "vm.show": Method(_vms.RefParams, r.VMWithWorkspaces),
    "vm.logs": Method(_vms.LogsParams, r.Logs),
    "vm.ssh": Method(_vms.RefParams, r.SSHTarget),
    "vm.ping": Method(_net.RefParams, r.VMPing),
    "vm.health": Method(_net.RefParams, r.Health),
    "vm.stats": Method(_net.RefParams, r.Stats),
    "vm.ports": Method(_net.PortsParams, r.Ports),
    "vm.workspace.prepare": Method(_ws.PrepareParams, r.WorkspacePrepare),
    "vm.workspace.export": Method(_ws.ExportParams, r.WorkspaceExport),
    # Extensions beyond the seed's 35 (tests/daemon/test_dispatch.py EXTENSIONS).
    "vm.egress": Method(_vms.RefParams, r.Egress),
    "vm.workspace.record": Method(handlers_remote.RecordParams, r.WorkspaceRecorded),
    # issue 14: checkpoints
    "vm.snapshot.create": Method(_snap.SnapshotTagParams, r.Snapshot),
    "vm.snapshot.list": Method(_snap.SnapshotRefParams, r.SnapshotList),
    "vm.snapshot.restore": Method(_snap.SnapshotTagParams, r.VM),
    "vm.snapshot.delete": Method(_snap.SnapshotTagParams, r.SnapshotDeleted),
    # issue 14: pause/resume, suspend
    "vm.pause": Method(handlers_pause.PauseParams, r.VM),
    "vm.resume": Method(handlers_pause.PauseParams, r.VM),
    "vm.suspend": Method(handlers_pause.PauseParams, r.VM),
}


def params_schema(method: str) -> dict[str, Any]:
    """What the daemon accepts as `params` (validation view of the params model)."""
    schema = CONTRACT[method].params.model_json_schema(mode="validation")
    return {"$schema": JSON_SCHEMA_DIALECT, **schema}


def result_schema(method: str) -> dict[str, Any]:
    """What the daemon sends as `result` (serialisation view: the JSON it dumps)."""
    schema = CONTRACT[method].result.model_json_schema(mode="serialization")
    return {"$schema": JSON_SCHEMA_DIALECT, **schema}


def schema_document(methods: list[str] | None = None) -> dict[str, Any]:
    """`{"methods": {name: {"params": …, "result": …}}}`, names sorted; all methods by default."""
    names = sorted(CONTRACT if methods is None else set(methods))
    return {
        "methods": {
            name: {"params": params_schema(name), "result": result_schema(name)} for name in names
        }
    }


@cache
def _validator(method: str) -> Any:
    import jsonschema  # type: ignore[import-untyped]

    return jsonschema.Draft202012Validator(result_schema(method))


def check_result(method: str, wire: Any) -> None:
    """OperationFailed naming the first mismatch when `wire` (the JSON-ready result) does not
    match the method's result schema, or when the method has no contract entry."""
    if method not in CONTRACT:
        raise OperationFailed(
            f"{method}: no result model is declared for this method (add it to CONTRACT in "
            "src/banger/daemon/contract.py)"
        )
    from jsonschema.exceptions import best_match  # type: ignore[import-untyped]

    # Exactly what the socket carries: tuples become lists, non-string keys strings.
    sent = json.loads(json.dumps(wire))
    error = best_match(_validator(method).iter_errors(sent))
    if error is None:
        return
    where = error.json_path.replace("$", "result", 1)
    raise OperationFailed(
        f"{method}: the result does not match its schema (`banger rpc schema --method "
        f"{method}`): at {where}: {clip(error.message, 300)}"
    )
