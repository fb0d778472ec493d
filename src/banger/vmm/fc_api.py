"""A typed async client for Firecracker's REST API over its Unix socket (httpx).

Every call is checked against the spec before it leaves: the route and method must exist, and the
body must validate against the operation's definition (`fc_spec`). Firecracker answers 204 for a
successful PUT/PATCH, 200 + JSON for a GET and 400 `{"fault_message": …}` otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import httpx

from banger.vmm.base import DriverError
from banger.vmm.fc_spec import FirecrackerSpec, load_spec


class SpecViolation(DriverError):
    """banger was about to send a request the Firecracker API contract does not allow."""


class FirecrackerAPIError(DriverError):
    """Firecracker refused a request (or the socket did not answer)."""

    def __init__(self, method: str, path: str, status: int, fault: str) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.fault = fault
        super().__init__(f"firecracker {method} {path} failed ({status}): {fault}")


class FirecrackerClient:
    def __init__(
        self, socket: Path | str, *, spec: FirecrackerSpec | None = None, timeout: float = 10.0
    ) -> None:
        self.socket = Path(socket)
        self.spec = spec or load_spec()
        self._http = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(self.socket)),
            base_url="http://localhost",
            timeout=timeout,
        )

    async def __aenter__(self) -> FirecrackerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def check(self, method: str, path: str, body: Any | None) -> None:
        """Raise SpecViolation unless `method path` with `body` is a call the spec defines."""
        found = self.spec.find(method, path)
        if found is None:
            raise SpecViolation(f"the Firecracker API has no {method} {path}")
        op, params = found
        if op.body_def is None:
            if body is not None:
                raise SpecViolation(f"{method} {path} takes no body")
            return
        if body is None:
            if op.body_required:
                raise SpecViolation(f"{method} {path} needs a {op.body_def} body")
            return
        errors = self.spec.errors(op.body_def, body)
        if errors:
            raise SpecViolation(
                f"{method} {path}: body does not match {op.body_def}: " + "; ".join(errors)
            )
        for name, value in params.items():
            # Firecracker requires the id in the path and in the body to agree.
            if isinstance(body, dict) and name in body and body[name] != value:
                raise SpecViolation(f"{method} {path}: body {name}={body[name]!r} differs")

    async def request(
        self, method: Literal["GET", "PUT", "PATCH"], path: str, body: Any = None
    ) -> Any:
        self.check(method, path, body)
        try:
            r = await self._http.request(method, path, json=body)
        except httpx.TransportError as e:
            raise FirecrackerAPIError(
                method, path, 0, f"no answer on {self.socket}: {e or type(e).__name__}"
            ) from None
        if r.status_code in (200, 204):
            return r.json() if r.status_code == 200 and r.content else None
        try:
            fault = str(r.json().get("fault_message", r.text))
        except ValueError:
            fault = r.text.strip() or "(empty answer)"
        raise FirecrackerAPIError(method, path, r.status_code, fault)

    async def get(self, path: str) -> Any:
        return await self.request("GET", path)

    async def put(self, path: str, body: Any) -> None:
        await self.request("PUT", path, body)

    async def patch(self, path: str, body: Any) -> None:
        await self.request("PATCH", path, body)

    # The calls banger makes, named after the resources they configure.
    async def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = await self.get("/")
        return info

    async def vm_config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = await self.get("/vm/config")
        return cfg

    async def action(self, action_type: str) -> None:
        await self.put("/actions", {"action_type": action_type})

    async def set_state(self, state: Literal["Paused", "Resumed"]) -> None:
        await self.patch("/vm", {"state": state})

    async def create_snapshot(
        self, snapshot_path: str, mem_file_path: str, kind: Literal["Full", "Diff"] = "Full"
    ) -> None:
        """`PUT /snapshot/create`: only on a Paused VM (Firecracker refuses it while running)."""
        await self.put(
            "/snapshot/create",
            {"snapshot_type": kind, "snapshot_path": snapshot_path, "mem_file_path": mem_file_path},
        )

    async def load_snapshot(self, body: dict[str, Any]) -> None:
        """`PUT /snapshot/load`: only on a fresh process (logger and metrics may precede it)."""
        await self.put("/snapshot/load", body)
