"""What each RPC method answers, as pydantic models: the `result` half of the published contract.

Handlers keep returning their records and dicts; these models only describe the JSON that
`dispatch` puts on the wire (`banger rpc schema` prints them, and the daemon checks every result
against them when BANGER_CHECK_RESULTS=1, as the test suite runs it: see daemon/contract.py).

Rules that keep the schema exact:
- Every model is closed (`extra="forbid"`): a key the daemon sends but no model declares is a
  mismatch, not a silent addition.
- Every declared field is always sent (serialisation schemas list defaulted fields as required),
  even when its value is null. A key that is only sometimes present is modelled as a union of
  shapes instead (a failed health check has `error`, a passed one `latency_ms`).
- Records the daemon dumps whole (VMs, images, kernels, workspaces) are subclasses of the stored
  models, so a field added to a record is in the contract at once.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from banger.images.model import ImageConfig as _ImageConfig
from banger.images.model import ImageRecord as _ImageRecord
from banger.images.model import TemplateInfo as _TemplateInfo
from banger.kernels.model import CatalogItem as _CatalogItem
from banger.kernels.model import KernelRecord as _KernelRecord
from banger.vms.spec import VMRecord as _VMRecord
from banger.workspace.export import ChangedFile as _ChangedFile
from banger.workspace.plan import PrepareOptions as _PrepareOptions
from banger.workspace.plan import WorkspacePlan as _WorkspacePlan
from banger.workspace.records import WorkspaceRecord as _WorkspaceRecord
from banger.workspace.ship import PrepareResult as _PrepareResult

_CLOSED = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)


class Result(BaseModel):
    """Base of the hand-written result shapes (closed, every field always sent)."""

    model_config = _CLOSED


class ErrorInfo(Result):
    """A per-item error inside a successful answer (the envelope's error has an op_id too)."""

    code: str
    message: str


# --- daemon --------------------------------------------------------------------------------------


class Ping(Result):
    version: str
    commit: str = Field(description="full sha the daemon runs, or empty when unknown")
    built: str = Field(description="install time, ISO 8601 UTC, or empty when unknown")
    pid: int
    uptime_seconds: float
    socket: str
    log: str


class Shutdown(Result):
    stopping: Literal[True]
    pid: int


# --- kernels -------------------------------------------------------------------------------------


class Kernel(_KernelRecord):
    model_config = _CLOSED


class KernelList(RootModel[list[Kernel]]):
    pass


class CatalogItem(_CatalogItem):
    model_config = _CLOSED


class KernelCatalog(RootModel[list[CatalogItem]]):
    pass


class KernelInstalled(Result):
    """`kernel.pull` and `kernel.import`: the kernel, and what to know about it."""

    kernel: Kernel
    warnings: list[str]


# --- images --------------------------------------------------------------------------------------


class ImageConfig(_ImageConfig):
    model_config = _CLOSED


class TemplateInfo(_TemplateInfo):
    model_config = _CLOSED


class Image(_ImageRecord):
    model_config = _CLOSED

    config: ImageConfig
    # Warm-create templates of the image (issue 14): `image show` fills it, others send [].
    templates: list[TemplateInfo] = Field(default_factory=list)  # type: ignore[assignment]


class ImageList(RootModel[list[Image]]):
    pass


class CachePrune(Result):
    dry_run: bool
    bytes: int = Field(description="bytes freed (or that would be, with dry_run)")
    blobs: int
    dir: str
    templates: int = Field(default=0, description="warm-create templates removed (issue 14)")


# --- vms -----------------------------------------------------------------------------------------


class VM(_VMRecord):
    model_config = _CLOSED


class ForkChild(Result):
    name: str
    ok: bool
    seconds: float = Field(description="from the checkpoint to this child answering SSH")
    vm: VM | None
    error: str | None = Field(description="why this child was not made (nothing of it is left)")


class Fork(Result):
    """`vm.fork`: the parent (running or paused as before) and each child, made or not."""

    parent: str
    parent_state: str
    paused_seconds: float = Field(description="the parent's vCPUs stood still this long")
    checkpoint_seconds: float
    shared_memory: bool = Field(description="the children map one RAM file copy-on-write")
    children: list[ForkChild]


class WorkspaceRef(Result):
    host_path: str
    guest_path: str


class VMWithWorkspaces(VM):
    """`vm.show` / `vm.list`: the VM plus its prepared workspaces, newest first."""

    workspaces: list[WorkspaceRef]


class VMList(RootModel[list[VMWithWorkspaces]]):
    pass


class VMDone(Result):
    vm: str
    ok: Literal[True]
    result: VM


class VMFailed(Result):
    vm: str
    ok: Literal[False]
    error: ErrorInfo


class FanOut(Result):
    """Several VMs named: one entry per VM, in the order given."""

    results: list[VMDone | VMFailed]


class VMChange(RootModel[VM | FanOut]):
    """`vm.start/stop/restart/kill/delete/set`: one VM named answers its record (or the
    request fails with that VM's error); several answer `{"results": [...]}`."""


class OperationProgress(Result):
    current: int
    total: int


class Operation(Result):
    """`vm.create.begin/status/cancel`: the asynchronous create as it stands."""

    id: str
    kind: str
    stage: str
    detail: str
    progress: OperationProgress
    done: bool
    cancelled: bool
    error: ErrorInfo | None
    vm: VM | None = Field(description="the created VM, once done")
    spec: str
    elapsed_seconds: float


class LogTail(Result):
    """`vm.logs` without `offset`: the log's tail."""

    vm: str
    path: str
    size: int = Field(description="bytes in the whole console log")
    content: str = Field(description="its last max_bytes, decoded with replacement")


class LogChunk(LogTail):
    """`vm.logs` with `offset` (`vm logs -f` over a remote host): exact bytes from there on."""

    content: str = Field(description="empty: the bytes are in data_base64")
    offset: int = Field(description="where data_base64 starts (0 when the log was recreated)")
    data_base64: str


class Logs(RootModel[LogTail | LogChunk]):
    pass


class SSHTarget(Result):
    host: str
    port: int
    user: str
    key_path: str
    known_hosts_path: str
    vm_name: str
    host_key_alias: str


class EgressResolved(Result):
    name: str
    addresses: list[str]
    expires_in: int = Field(description="seconds until the last of them expires")


class EgressDenied(Result):
    target: str
    port: int
    proto: str
    reason: str
    count: int
    first_seen: str
    last_seen: str


class Egress(Result):
    """`vm.egress`: the VM's egress policy, the names resolved for it, what it was denied."""

    vm: str
    mode: str
    rules: list[str]
    nat: bool
    enforced: bool
    running: bool
    resolved: list[EgressResolved]
    denied: list[EgressDenied]


# --- guest observability -------------------------------------------------------------------------


class VMPing(Result):
    vm: str
    alive: bool
    latency_ms: float | None
    error: str | None


class CheckPassed(Result):
    name: str
    ok: Literal[True]
    latency_ms: float


class CheckFailed(Result):
    name: str
    ok: Literal[False]
    error: str


class Health(Result):
    vm: str
    healthy: bool
    checks: list[CheckPassed | CheckFailed]


class HostStats(Result):
    pid: int
    cpu_percent: float
    cpu_seconds: float
    rss_bytes: int
    threads: int
    disk_allocated_bytes: dict[str, int | None] = Field(description="disk label -> bytes")


class GuestDisk(Result):
    mount: str
    total_bytes: int
    used_bytes: int


class GuestStats(Result):
    cpu_percent: float
    load: Annotated[list[float], Field(min_length=3, max_length=3)]
    mem_total_bytes: int
    mem_used_bytes: int
    uptime_seconds: float
    disks: list[GuestDisk]


class Stats(Result):
    vm: str
    at: float = Field(description="Unix time of the sample")
    host: HostStats
    guest: GuestStats | None
    guest_error: str | None


class Port(Result):
    vm: str
    proto: str
    address: str
    port: int
    pid: int | None
    process: str | None
    url: str | None


class PortsFailed(Result):
    """A VM whose ports could not be read (only when no VM was named)."""

    vm: str
    error: str


class Ports(RootModel[list[Port | PortsFailed]]):
    pass


# --- checkpoints (issue 14) -----------------------------------------------------------------------


class Snapshot(Result):
    """`vm.snapshot.create`, and each entry of `vm.snapshot.list`."""

    vm: str
    tag: str
    kind: Literal["checkpoint", "suspend"]
    created_at: str = Field(description="ISO 8601 UTC")
    size_bytes: int = Field(description="bytes allocated on the host's disk")
    paused_ms: int | None = Field(description="how long the guest stood still while it was taken")


class SnapshotList(RootModel[list[Snapshot]]):
    pass


class SnapshotDeleted(Result):
    vm: str
    tag: str
    layers_kept: bool = Field(
        description="its frozen disk layers stay while later layers are backed by them"
    )


# --- workspaces ----------------------------------------------------------------------------------


class PrepareOptions(_PrepareOptions):
    model_config = _CLOSED


class WorkspaceRecord(_WorkspaceRecord):
    model_config = _CLOSED

    options: PrepareOptions


class WorkspacePlan(_WorkspacePlan):
    model_config = _CLOSED


class Prepared(_PrepareResult):
    """A workspace shipped into the guest."""

    model_config = _CLOSED

    vm: str


class DryRunNothingRecorded(Result):
    """A dry run of a re-sync when the VM has no workspace yet."""

    vm: str
    dry_run: Literal[True]
    recorded: None
    plan: None


class DryRunCheckoutGone(Result):
    """A dry run of a re-sync whose host checkout cannot be read any more."""

    vm: str
    dry_run: Literal[True]
    plan: None
    recorded: WorkspaceRecord | None
    head_moved: Literal[False]
    warning: str


class DryRunPlan(Result):
    vm: str
    dry_run: Literal[True]
    plan: WorkspacePlan
    recorded: WorkspaceRecord | None
    head_moved: bool = Field(description="the host's HEAD is not what was last shipped")


class WorkspacePrepare(
    RootModel[Prepared | DryRunNothingRecorded | DryRunCheckoutGone | DryRunPlan]
):
    pass


class WorkspaceRecorded(Result):
    """`vm.workspace.record`: a workspace a remote client shipped itself, now on record."""

    vm: str
    guest_path: str
    host_path: str


class ChangedFile(_ChangedFile):
    model_config = _CLOSED


class ExportInline(Result):
    vm: str
    guest_path: str
    base_commit: str
    files: list[ChangedFile]
    patch_bytes: int
    patch_base64: str


class ExportBySSH(Result):
    """`transfer: "ssh"`: where the caller streams the patch from itself."""

    vm: str
    guest_path: str
    base_commit: str | None
    max_bytes: int
    ssh: SSHTarget


class WorkspaceExport(RootModel[ExportInline | ExportBySSH]):
    pass
