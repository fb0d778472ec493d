"""Which guest paths a workspace may use."""

from __future__ import annotations

import pytest

from banger.errors import InvalidInput
from banger.workspace.plan import validate_guest_path


@pytest.mark.parametrize("path", ["/root/repo", "/srv/app", "/opt/x/", "/root/.banger"])
def test_ordinary_paths_are_accepted(path: str) -> None:
    assert validate_guest_path(path) == path.rstrip("/")


@pytest.mark.parametrize(
    "path", ["/.banger", "/.banger/ssh", "/proc/1", "/sys", "/dev/shm/x", "/run/x", "/boot"]
)
def test_paths_banger_or_the_guest_system_own_are_refused(path: str) -> None:
    # Accepted before: failed late in the guest (busy/read-only mount) or lived in a tmpfs.
    with pytest.raises(InvalidInput, match="which banger or the guest system owns"):
        validate_guest_path(path)


@pytest.mark.parametrize("path", ["rel", "/a/../b", "/", "/a\nb", "/a\0b", "/etc"])
def test_malformed_or_system_paths_are_refused(path: str) -> None:
    with pytest.raises(InvalidInput, match="guest path"):
        validate_guest_path(path)
