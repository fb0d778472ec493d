"""A contract double of Firecracker's API, generated from its Swagger spec.

The route table is the spec's `paths` (every method of every path, path parameters included);
every body is validated with jsonschema against the definition the operation references, with
unknown fields refused (Firecracker's request types deny them). Pre-boot / post-boot rules come
from the operations' own summaries ("Pre-boot only." / "Post-boot only."), plus the few the
spec states only in prose (listed in `EXTRA_PHASE`). Errors are `400 {"fault_message": …}` as
Firecracker sends them. Every request is recorded (method, path, body, status).

Snapshots follow firecracker v1.16.1 (docs/snapshotting/snapshot-support.md, and the code that
enforces it): `PUT /snapshot/create` only on a `Paused` VM (src/vmm/src/vstate/vcpu.rs: a running
vCPU answers SaveState with NotAllowed("save/restore unavailable while running")), `PUT
/snapshot/load` only on a fresh process before any boot-specific resource is configured
(src/vmm/src/rpc_interface.rs `PrebootApiController::load_snapshot` and its `boot_path` flag; the
logger, metrics, serial and cpu-config do not set it), exactly one of `mem_backend` /
`mem_file_path` (src/firecracker/src/api_server/request/snapshot.rs), and a failed load ends the
process (`fatal_error` → exit code 1, `FcExitCode::GenericError`). The double writes real files:
the state file is JSON of the recorded configuration (opaque to banger, as the real one is), the
memory file is a sparse image of `mem_size_mib` holding the simulated guest's pages.

This module is deliberately independent of banger's own spec loader (`banger.vmm.fc_spec`), so a
bug there cannot hide a contract violation here.
"""

from __future__ import annotations

import copy
import json
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SPEC_PATH = Path(__file__).resolve().parents[3] / "src" / "banger" / "vmm" / "firecracker.yaml"

# Phase rules the summaries do not carry: stated in the spec's prose, or only in Firecracker's
# request dispatcher (src/vmm/src/rpc_interface.rs: the pre-boot and runtime controllers).
EXTRA_PHASE: dict[tuple[str, str], str] = {
    ("PATCH", "/vm"): "post",  # Pause / Resume
    (
        "PUT",
        "/logger",
    ): "pre",  # ConfigureLogger: "can only be called before the microVM has booted"
    ("PUT", "/metrics"): "pre",
    ("PUT", "/serial"): "pre",
    ("PUT", "/balloon"): "pre",  # "This will fail after machine startup."
    ("PATCH", "/balloon"): "post",  # UpdateBalloon is refused pre-boot
    ("GET", "/balloon/statistics"): "post",
    ("PATCH", "/balloon/statistics"): "post",
    ("PATCH", "/balloon/hinting/start"): "post",
    ("GET", "/balloon/hinting/status"): "post",
    ("PATCH", "/balloon/hinting/stop"): "post",
    ("PUT", "/hotplug/memory"): "pre",
    ("PATCH", "/hotplug/memory"): "post",
    ("GET", "/hotplug/memory"): "post",
}
ACTION_PHASE = {"InstanceStart": "pre", "SendCtrlAltDel": "post", "FlushMetrics": "post"}
# The requests that set `boot_path` in rpc_interface.rs (PrebootApiController: insert_block_device,
# insert_net_device, insert_pmem_device, set_balloon_device, set_boot_source, set_mmds_config,
# update_machine_config, set_vsock_device, set_entropy_device, set_memory_hotplug_device).
BOOT_PATH_OPS = {
    "putGuestBootSource", "putMachineConfiguration", "patchMachineConfiguration",
    "putGuestDriveByID", "putGuestNetworkInterfaceByID", "putGuestPmemByID", "putBalloon",
    "putGuestVsock", "putMmdsConfig", "putEntropyDevice", "putMemoryHotplug",
}  # fmt: skip
PAGE = 4096
# VcpuResponse::NotAllowed from a running vCPU (vcpu.rs), wrapped by MicrovmStateError::NotAllowed,
# CreateSnapshotError::MicrovmState and VmmActionError::CreateSnapshot (their displaydoc strings).
CREATE_WHILE_RUNNING_FAULT = (
    "Create snapshot error: Cannot save the microVM state: Operation not allowed: "
    "save/restore unavailable while running"
)
# LoadSnapshotError::LoadSnapshotNotAllowed inside VmmActionError::LoadSnapshot.
LOAD_AFTER_CONFIG_FAULT = (
    "Load snapshot error: Loading a microVM snapshot not allowed after configuring "
    "boot-specific resources."
)
SERDE = "An error occurred when deserializing the json body of a request: {}."
# request/snapshot.rs MISSING_FIELD / TOO_MANY_FIELDS.
LOAD_MISSING_MEM = SERDE.format(
    "missing field: either `mem_backend` or `mem_file_path` is required"
)
LOAD_TOO_MANY_MEM = SERDE.format(
    "too many fields: either `mem_backend` or `mem_file_path` exclusively is required"
)
RESTORE_FAULT = "Load snapshot error: Failed to restore from snapshot: {}"
SNAPSHOT_MAGIC = "firecracker-double-vmstate"
PRE_BOOT_FAULT = "The requested operation is not supported after starting the microVM."
POST_BOOT_FAULT = "The requested operation is not supported before starting the microVM."


class Fault(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _bool12_loader() -> type[yaml.SafeLoader]:
    """YAML 1.2 booleans: `Off` in Logger.level must stay a string."""

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {
        k: [(t, r) for t, r in v if t != "tag:yaml.org,2002:bool"]
        for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:bool", re.compile(r"^(?:true|false)$", re.I), list("tTfF")
    )
    return Loader


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    pattern: re.Pattern[str]
    operation_id: str
    body_def: str | None
    body_required: bool
    ok_status: int
    ok_def: str | None
    phase: str  # "pre", "post" or "any"


def load_routes(spec_path: Path = SPEC_PATH) -> tuple[list[Route], dict[str, Any], str]:
    spec = yaml.load(spec_path.read_text(), Loader=_bool12_loader())
    routes = []
    for template, methods in spec["paths"].items():
        pattern = re.compile("^" + re.sub(r"{(\w+)}", r"(?P<\1>[^/]+)", template) + "$")
        for method, op in methods.items():
            body = next((p for p in op.get("parameters", []) if p["in"] == "body"), None)
            ok = next(s for s in op["responses"] if s != "default" and int(s) < 300)
            ok_schema = op["responses"][ok].get("schema", {})
            summary = op.get("summary", "")
            phase = (
                "pre"
                if "Pre-boot only" in summary
                else "post"
                if "Post-boot only" in summary
                else "any"
            )
            phase = EXTRA_PHASE.get((method.upper(), template), phase)
            routes.append(
                Route(
                    method=method.upper(),
                    template=template,
                    pattern=pattern,
                    operation_id=op["operationId"],
                    body_def=body["schema"]["$ref"].rsplit("/", 1)[-1] if body else None,
                    body_required=bool(body and body.get("required")),
                    ok_status=int(ok),
                    ok_def=ok_schema.get("$ref", "").rsplit("/", 1)[-1] or None,
                    phase=phase,
                )
            )
    definitions = copy.deepcopy(spec["definitions"])
    for d in definitions.values():
        if d.get("type") == "object" and "properties" in d and "additionalProperties" not in d:
            d["additionalProperties"] = False
    return routes, definitions, str(spec["info"]["version"])


@dataclass
class Call:
    method: str
    path: str
    body: Any
    status: int
    fault: str = ""


@dataclass
class FirecrackerDouble:
    """Firecracker's API state machine. `handle()` is one request; it never raises."""

    instance_id: str = "anonymous-instance"
    cwd: Path = field(default_factory=Path.cwd)  # relative paths resolve from here (jail root)
    on_start: Callable[[FirecrackerDouble], None] | None = None
    on_ctrl_alt_del: Callable[[FirecrackerDouble], None] | None = None
    on_vsock: Callable[[FirecrackerDouble, str], None] | None = None
    on_state: Callable[[FirecrackerDouble, str], None] | None = None

    def __post_init__(self) -> None:
        self.routes, self.definitions, self.version = load_routes()
        self.validators = {
            name: jsonschema.Draft4Validator(
                {"$ref": f"#/definitions/{name}", "definitions": self.definitions}
            )
            for name in self.definitions
        }
        self.state = "Not started"
        self.calls: list[Call] = []
        self.resources: dict[str, Any] = {
            "machine-config": {
                "vcpu_count": 1,
                "mem_size_mib": 128,
                "smt": False,
                "track_dirty_pages": False,
            },
            "drives": {},
            "network-interfaces": {},
        }
        self.lock = threading.Lock()
        # The simulated guest's RAM: page index -> bytes, and the pages written since the last
        # snapshot (KVM's dirty log when track_dirty_pages is on).
        self.memory: dict[int, bytes] = {}
        self.dirty: set[int] = set()
        self.boot_path = False  # rpc_interface.rs PrebootApiController::boot_path
        self.fatal = False  # a failed load: the process ends after answering
        self.on_restore: Callable[[FirecrackerDouble], None] | None = None

    def write_page(self, index: int, data: bytes) -> None:
        """The guest writes one page of its RAM (shorter data is zero-padded)."""
        assert len(data) <= PAGE
        self.memory[index] = data.ljust(PAGE, b"\0")
        self.dirty.add(index)

    def read_page(self, index: int) -> bytes:
        return self.memory.get(index, b"\0" * PAGE).rstrip(b"\0")

    # ---- plumbing -----------------------------------------------------------------------------

    def host_path(self, p: str) -> Path:
        return Path(p) if os.path.isabs(p) else self.cwd / p

    def handle(self, method: str, path: str, raw: bytes) -> tuple[int, Any]:
        with self.lock:
            body: Any = None
            try:
                route, params = self._route(method, path)
                if raw.strip():
                    try:
                        body = json.loads(raw)
                    except ValueError as e:
                        raise Fault(f"Invalid body: not JSON ({e})") from None
                status, answer = self._dispatch(route, params, body)
                if route.ok_def and answer is not None:
                    problems = list(self.validators[route.ok_def].iter_errors(answer))
                    assert not problems, f"double answered outside the spec: {problems[0].message}"
                self.calls.append(Call(method, path, body, status))
                return status, answer
            except Fault as f:
                self.calls.append(Call(method, path, body, f.status, str(f)))
                return f.status, {"fault_message": str(f)}

    def _route(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        for r in self.routes:
            m = r.pattern.match(path)
            if m and r.method == method:
                return r, m.groupdict()
        raise Fault(f"Invalid request method and/or path: {method} {path}.")

    def _dispatch(self, route: Route, params: dict[str, str], body: Any) -> tuple[int, Any]:
        if route.body_def:
            if body is None:
                if route.body_required:
                    raise Fault(f"Empty request body: {route.operation_id} needs {route.body_def}.")
            else:
                errors = sorted(self.validators[route.body_def].iter_errors(body), key=str)
                if errors:
                    e = errors[0]
                    where = ".".join(map(str, e.absolute_path)) or route.body_def
                    raise Fault(
                        "An error occurred when deserializing the json body of a request: "
                        f"{where}: {e.message}"
                    )
        elif body is not None:
            raise Fault(f"{route.method} {route.template} does not take a body.")
        for name, value in params.items():
            if isinstance(body, dict) and name in body and body[name] != value:
                raise Fault(
                    f"The id from the path [{value}] does not match the id "
                    f"from the body [{body[name]}]!"
                )
        phase = route.phase
        if route.operation_id == "createSyncAction":
            phase = ACTION_PHASE[body["action_type"]]
        booted = self.state != "Not started"
        if phase == "pre" and booted:
            raise Fault(PRE_BOOT_FAULT)
        if phase == "post" and not booted:
            raise Fault(POST_BOOT_FAULT)
        handler = getattr(self, "op_" + route.operation_id, None)
        if route.operation_id in BOOT_PATH_OPS:
            self.boot_path = True
        if handler is not None:
            answer = handler(params, body)
        elif route.method == "GET":
            raise Fault(f"{route.template}: not configured.")
        else:
            answer = None
            self.resources[route.template.strip("/")] = body
        return route.ok_status, answer

    def _must_exist(self, what: str, p: str) -> None:
        if not self.host_path(p).exists():
            raise Fault(f"{what}: No such file or directory (os error 2): {p}")

    # ---- operations with semantics beyond "store the body" --------------------------------------

    def op_describeInstance(self, params: dict[str, str], body: Any) -> Any:
        return {
            "app_name": "Firecracker",
            "id": self.instance_id,
            "state": self.state,
            "vmm_version": self.version,
        }

    def op_getFirecrackerVersion(self, params: dict[str, str], body: Any) -> Any:
        return {"firecracker_version": self.version}

    def op_getMachineConfiguration(self, params: dict[str, str], body: Any) -> Any:
        return self.resources["machine-config"]

    def op_putLogger(self, params: dict[str, str], body: Any) -> Any:
        if "log_path" in body:
            self._must_exist("Cannot open the log file", body["log_path"])
        self.resources["logger"] = body

    def op_putMetrics(self, params: dict[str, str], body: Any) -> Any:
        if "metrics" in self.resources:
            raise Fault("Reinitialization of metrics not allowed.")
        self._must_exist("Cannot open the metrics file", body["metrics_path"])
        self.resources["metrics"] = body

    def op_putMachineConfiguration(self, params: dict[str, str], body: Any) -> Any:
        if body.get("smt") and body["vcpu_count"] > 1 and body["vcpu_count"] % 2:
            raise Fault(
                "The vCPU number is invalid! The vCPU number can only be 1 or an even "
                "number when SMT is enabled."
            )
        if body.get("huge_pages") == "2M" and body["mem_size_mib"] % 2:
            raise Fault("The memory size (MiB) must be a multiple of 2 with 2M huge pages.")
        self.resources["machine-config"] = {"smt": False, "track_dirty_pages": False, **body}

    def op_putGuestBootSource(self, params: dict[str, str], body: Any) -> Any:
        self._must_exist("The kernel file cannot be opened", body["kernel_image_path"])
        if "initrd_path" in body:
            self._must_exist("The initrd file cannot be opened", body["initrd_path"])
        self.resources["boot-source"] = body

    def op_putGuestDriveByID(self, params: dict[str, str], body: Any) -> Any:
        if "socket" not in body:
            for key in ("path_on_host", "is_read_only"):
                if key not in body:
                    raise Fault(
                        f"Unable to create the block device: {key} is required for virtio-block."
                    )
            self._must_exist("Unable to create the block device", body["path_on_host"])
        drives: dict[str, Any] = self.resources["drives"]
        if body["is_root_device"] and any(
            d["is_root_device"] for i, d in drives.items() if i != body["drive_id"]
        ):
            raise Fault("A root block device already exists!")
        drives[body["drive_id"]] = body

    def op_patchGuestDriveByID(self, params: dict[str, str], body: Any) -> Any:
        drive = self.resources["drives"].get(body["drive_id"])
        if drive is None:
            raise Fault(f"Invalid block device ID: {body['drive_id']}")
        drive.update(body)

    def op_putGuestNetworkInterfaceByID(self, params: dict[str, str], body: Any) -> Any:
        name = body["host_dev_name"]
        if len(name) > 15 or not Path("/sys/class/net", name).exists():
            raise Fault(f"Open tap device failed: Error while creating ifreq structure: {name}")
        self.resources["network-interfaces"][body["iface_id"]] = body

    def op_putGuestVsock(self, params: dict[str, str], body: Any) -> Any:
        path = self.host_path(body["uds_path"])
        if path.exists():
            raise Fault(
                "Cannot create backend for vsock device: Error binding to the host-side "
                f"Unix socket: Address in use (os error 98): {body['uds_path']}"
            )
        if self.on_vsock:
            self.on_vsock(self, str(path))
        self.resources["vsock"] = body

    def op_getExportVmConfig(self, params: dict[str, str], body: Any) -> Any:
        out: dict[str, Any] = {}
        for key, value in self.resources.items():
            if key in ("drives", "network-interfaces"):
                out[key] = list(value.values())
            elif key in (
                "boot-source",
                "logger",
                "metrics",
                "machine-config",
                "vsock",
                "balloon",
                "entropy",
            ):
                out[key] = value
        return out

    def op_createSyncAction(self, params: dict[str, str], body: Any) -> Any:
        action = body["action_type"]
        if action == "InstanceStart":
            boot = self.resources.get("boot-source")
            if boot is None:
                raise Fault("Cannot start microvm without kernel configuration.")
            kernel = self.host_path(boot["kernel_image_path"])
            try:
                magic = kernel.read_bytes()[:4]
            except OSError:
                raise Fault("Cannot start microvm: the kernel file cannot be opened.") from None
            if magic != b"\x7fELF":
                raise Fault(
                    "Cannot load kernel due to invalid memory configuration or invalid kernel "
                    "image: Kernel Loader: failed to load ELF kernel image"
                )
            # Stricter than Firecracker (it boots initrd-only guests): banger always boots a root.
            if not any(d["is_root_device"] for d in self.resources["drives"].values()):
                raise Fault("Cannot start microvm without a root block device.")
            self.state = "Running"
            if self.on_start:
                self.on_start(self)
        elif action == "SendCtrlAltDel" and self.on_ctrl_alt_del:
            self.on_ctrl_alt_del(self)

    def op_patchVm(self, params: dict[str, str], body: Any) -> Any:
        self.state = "Paused" if body["state"] == "Paused" else "Running"
        if self.on_state:
            self.on_state(self, self.state)

    # ---- snapshots (docs/snapshotting/snapshot-support.md, src/vmm/src/persist.rs) -------------

    def op_createSnapshot(self, params: dict[str, str], body: Any) -> Any:
        if self.state != "Paused":
            raise Fault(CREATE_WHILE_RUNNING_FAULT)
        snap = self.host_path(body["snapshot_path"])
        mem = self.host_path(body["mem_file_path"])
        kind = body.get("snapshot_type", "Full")
        state = {
            "magic": SNAPSHOT_MAGIC,
            "version": self.version,
            "resources": {
                k: copy.deepcopy(self.resources[k])
                for k in ("machine-config", "boot-source", "drives", "network-interfaces", "vsock")
                if k in self.resources
            },
        }
        # persist.rs snapshot_state_to_file: create/truncate, write, flush, sync_all.
        try:
            with snap.open("w") as f:
                json.dump(state, f)
        except OSError as e:
            raise Fault(
                "Create snapshot error: Cannot perform open on the snapshot backing file: "
                f"{e.strerror} (os error {e.errno})"
            ) from None
        # Full: every page. Diff: the dirty log when tracking is on, else mincore's view of the
        # resident pages (all the double has). Either way a sparse file of the guest's size.
        tracking = bool(self.resources["machine-config"].get("track_dirty_pages"))
        pages = self.dirty if kind == "Diff" and tracking else set(self.memory)
        size = int(self.resources["machine-config"]["mem_size_mib"]) << 20
        try:
            with mem.open("wb") as f:
                f.truncate(size)
                for i in sorted(pages):
                    f.seek(i * PAGE)
                    f.write(self.memory[i])
        except OSError as e:
            raise Fault(
                "Create snapshot error: Cannot write memory file: "
                f"{e.strerror} (os error {e.errno})"
            ) from None
        self.dirty.clear()  # "the snapshot creation resets then the dirtied page bitmap"

    def op_loadSnapshot(self, params: dict[str, str], body: Any) -> Any:
        backend, legacy = body.get("mem_backend"), body.get("mem_file_path")
        if backend is not None and legacy is not None:
            raise Fault(LOAD_TOO_MANY_MEM)
        if backend is None and legacy is None:
            raise Fault(LOAD_MISSING_MEM)
        if self.boot_path:
            raise Fault(LOAD_AFTER_CONFIG_FAULT)  # not fatal: rejected before restoring
        try:
            self._restore(body, backend or {"backend_type": "File", "backend_path": legacy})
        except Fault:
            self.fatal = True  # rpc_interface.rs: "the process is too dirty to recover"
            raise

    def _restore(self, body: Any, backend: dict[str, str]) -> None:
        snap = self.host_path(body["snapshot_path"])
        try:
            state = json.loads(snap.read_text())
        except OSError as e:
            raise Fault(
                RESTORE_FAULT.format(
                    "Failed to get snapshot state from file: Failed to open snapshot file: "
                    f"{e.strerror} (os error {e.errno})"
                )
            ) from None
        except ValueError:
            state = None
        if not isinstance(state, dict) or state.get("magic") != SNAPSHOT_MAGIC:
            raise Fault(
                RESTORE_FAULT.format(
                    "Failed to get snapshot state from file: Failed to load snapshot state from "
                    "file: Snapshot error: CRC64 validation failed"
                )
            )
        resources = state["resources"]
        # persist.rs restore_from_snapshot: overrides are applied to the state before building.
        for o in body.get("network_overrides", []):
            iface = resources.get("network-interfaces", {}).get(o["iface_id"])
            if iface is None:
                raise Fault(
                    RESTORE_FAULT.format(
                        "Failed to get snapshot state from file: Unknown Network Device."
                    )
                )
            iface["host_dev_name"] = o["host_dev_name"]
        if "vsock_override" in body:
            if "vsock" not in resources:
                raise Fault(
                    RESTORE_FAULT.format(
                        "Failed to get snapshot state from file: Unknown Vsock Device."
                    )
                )
            resources["vsock"]["uds_path"] = body["vsock_override"]["uds_path"]
        if backend["backend_type"] != "File":
            raise Fault(
                RESTORE_FAULT.format(
                    "Failed to load guest memory: Error creating guest memory from uffd: "
                    "the contract double serves no userfaultfd page-fault handler"
                )
            )
        mem = self.host_path(backend["backend_path"])
        size = int(resources["machine-config"]["mem_size_mib"]) << 20
        try:
            with mem.open("rb") as f:
                if os.fstat(f.fileno()).st_size != size:
                    raise Fault(
                        RESTORE_FAULT.format(
                            "Failed to load guest memory: Error creating guest memory from file: "
                            "the memory file does not match the snapshot's memory size"
                        )
                    )
                memory = _read_pages(f.fileno(), size)
        except OSError as e:
            raise Fault(
                RESTORE_FAULT.format(
                    "Failed to load guest memory: Error creating guest memory from file: "
                    f"{e.strerror} (os error {e.errno})"
                )
            ) from None
        # Devices reopen their host resources at the recorded (or overridden) paths.
        for d in resources.get("drives", {}).values():
            if "path_on_host" in d and not self.host_path(d["path_on_host"]).exists():
                raise Fault(
                    RESTORE_FAULT.format(
                        "Failed to build microVM from snapshot: Cannot restore devices: Block: "
                        f"No such file or directory (os error 2): {d['path_on_host']}"
                    )
                )
        for n in resources.get("network-interfaces", {}).values():
            if not Path("/sys/class/net", n["host_dev_name"]).exists():
                raise Fault(
                    RESTORE_FAULT.format(
                        "Failed to build microVM from snapshot: Cannot restore devices: Net: "
                        f"Open tap device failed: {n['host_dev_name']}"
                    )
                )
        vsock = resources.get("vsock")
        if vsock is not None:
            if self.host_path(vsock["uds_path"]).exists():
                raise Fault(
                    RESTORE_FAULT.format(
                        "Failed to build microVM from snapshot: Cannot restore devices: Vsock: "
                        f"Address in use (os error 98): {vsock['uds_path']}"
                    )
                )
            if self.on_vsock:
                self.on_vsock(self, str(self.host_path(vsock["uds_path"])))
        self.resources.update(copy.deepcopy(resources))
        self.resources["machine-config"]["track_dirty_pages"] = bool(
            body.get("track_dirty_pages") or body.get("enable_diff_snapshots")
        )
        self.memory = memory
        self.dirty = set()  # "It then resets the dirtied page bitmap"
        self.state = "Running" if body.get("resume_vm") else "Paused"
        if self.on_restore:
            self.on_restore(self)


def _read_pages(fd: int, size: int) -> dict[int, bytes]:
    """The data pages of a sparse memory file (its holes are zero pages)."""
    pages: dict[int, bytes] = {}
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            break  # ENXIO: only a hole remains
        end = os.lseek(fd, start, os.SEEK_HOLE)
        first = start - start % PAGE
        for off in range(first, end, PAGE):
            data = os.pread(fd, PAGE, off)
            if data.strip(b"\0"):
                pages[off // PAGE] = data
        pos = end
    return pages
