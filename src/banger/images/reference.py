"""OCI image references: `[registry/]repository[:tag][@sha256:digest]`."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"

_REPO_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_HOST = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")


class ReferenceError(ValueError):
    """The reference text is not a valid OCI image reference."""


@dataclass(frozen=True)
class Reference:
    registry: str  # as written (docker.io for Docker Hub), with port
    repository: str
    tag: str | None
    digest: str | None

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def hostname(self) -> str:
        host = self.registry
        if host.startswith("["):
            return host[1 : host.index("]")]
        return host.rsplit(":", 1)[0] if host.count(":") == 1 else host

    @property
    def target(self) -> str:
        """What to ask the manifests endpoint for: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    def default_name(self) -> str:
        """An image name derived from the ref: `debian:bookworm` → `debian-bookworm`."""
        base = self.repository.rsplit("/", 1)[-1]
        if self.tag and self.tag != "latest":
            base = f"{base}-{self.tag}"
        elif self.digest:
            base = f"{base}-{self.digest[7:19]}"
        name = re.sub(r"[^a-z0-9._-]+", "-", base.lower()).strip("-._")
        return name[:63] or "image"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_reference(text: str) -> Reference:
    raw = text.strip()
    if not raw or any(c.isspace() for c in raw):
        raise ReferenceError(f"image reference {text!r} is empty or contains spaces")
    digest = None
    if "@" in raw:
        raw, digest = raw.split("@", 1)
        if not _DIGEST.match(digest):
            raise ReferenceError(
                f"image reference {text!r}: digest must look like sha256:<64 hex digits>"
            )
    registry = DOCKER_HUB
    first, sep, rest = raw.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        if not _HOST.match(first):
            raise ReferenceError(f"image reference {text!r}: bad registry host {first!r}")
        registry, raw = first, rest
    tag = None
    last_slash = raw.rfind("/")
    colon = raw.rfind(":")
    if colon > last_slash:
        raw, tag = raw[:colon], raw[colon + 1 :]
        if not _TAG.match(tag):
            raise ReferenceError(f"image reference {text!r}: bad tag {tag!r}")
    if registry in (DOCKER_HUB, "index.docker.io", DOCKER_HUB_API):
        registry = DOCKER_HUB
        if "/" not in raw:
            raw = f"library/{raw}"
    components = raw.split("/")
    if not raw or not all(_REPO_COMPONENT.match(c) for c in components):
        raise ReferenceError(
            f"image reference {text!r}: repository {raw!r} must be lowercase letters, digits "
            "and separators (e.g. docker.io/library/debian:bookworm)"
        )
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry=registry, repository=raw, tag=tag, digest=digest)
