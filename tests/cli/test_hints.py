"""The CLI's hints: services' messages name no command; the CLI adds the one to run next."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from banger.cli.hints import hint_for
from tests.conftest import BangerEnv


@dataclass(frozen=True)
class Case:
    id: str
    method: str
    code: str
    message: str
    hint: str | None


CASES = [
    Case(
        "builtin-typo",
        "image.pull",
        "not_found",
        "registry said no; did you mean banger's built-in 'debian-bookworm'?",
        "banger image pull debian-bookworm",
    ),
    Case(
        "builtin-typo-unreachable",
        "image.pull",
        "operation_failed",
        "cannot reach https://registry-1.docker.io/v2/x; did you mean banger's built-in "
        "'debian-bookworm'?",
        "banger image pull debian-bookworm",
    ),
    Case(
        "reserved-name",
        "image.register",
        "bad_request",
        "the name 'debian-bookworm' is reserved for banger's built-in offline image; choose "
        "another name",
        "banger image pull debian-bookworm gets the built-in image; pass another --name",
    ),
    Case(
        "image-missing-at-create",
        "vm.create",
        "not_found",
        "image 'dev' not found; pull it under that name or use the built-in 'debian-bookworm'",
        "banger image pull <oci-ref> --name dev, or use the built-in debian-bookworm",
    ),
    Case("image-missing", "image.show", "not_found", "image 'x' not found", "banger image list"),
    Case(
        "image-exists",
        "image.pull",
        "already_exists",
        "image 'x' already exists; delete it or choose another name",
        "banger image delete x, or pass another --name",
    ),
    Case(
        "kernel-ref-and-files",
        "image.pull",
        "bad_request",
        "give either a kernel ref or kernel/initrd/modules files, not both",
        "pass either --kernel-ref NAME or --kernel FILE [--initrd FILE] [--modules DIR]",
    ),
    Case(
        "kernel-missing-at-create",
        "vm.create",
        "not_found",
        "kernel 'k' not found; pull it from the catalog or import one",
        "banger kernel pull k, or banger kernel import k --from-host",
    ),
    Case(
        "kernel-missing",
        "kernel.show",
        "not_found",
        "kernel 'k' not found",
        "banger kernel list (local), banger kernel catalog (to pull), banger kernel import "
        "(your own)",
    ),
    Case(
        "kernel-not-in-catalog",
        "kernel.pull",
        "not_found",
        "kernel 'k' is not in the catalog (set kernel_catalog in the config to add a catalog)",
        "banger kernel catalog lists the kernels to pull",
    ),
    Case(
        "kernel-exists",
        "kernel.import",
        "already_exists",
        "kernel 'k' already exists; delete it first or replace it (force)",
        "banger kernel delete k first, or pass --force to replace it",
    ),
    Case(
        "kernel-without-initramfs",
        "vm.create",
        "bad_request",
        "kernel k has no initramfs; re-import it with its modules so banger can generate one",
        "banger kernel import k --kernel FILE --modules DIR --force",
    ),
    Case("vm-missing", "vm.show", "not_found", "vm 'ghost' not found", "banger vm list"),
    Case(
        "vm-not-running",
        "vm.ssh",
        "not_running",
        "vm devbox is stopped",
        "banger vm start devbox",
    ),
    Case(
        "vm-set-while-running",
        "vm.set",
        "conflict",
        "vm devbox is running; stop it first, change it, then start it again",
        "banger vm stop devbox, then vm set, then vm start devbox",
    ),
    Case(
        "no-workspace",
        "vm.workspace.export",
        "not_found",
        "no workspace at /root/repo; prepare the workspace first",
        "banger vm workspace prepare VM PATH",
    ),
    # No rule: the plain message stands alone.
    Case("other-code", "vm.show", "operation_failed", "vm 'ghost' not found", None),
    Case("other-method", "kernel.show", "not_found", "vm 'ghost' not found", None),
    Case("unrelated", "image.pull", "operation_failed", "registry unreachable", None),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hint_table(case: Case) -> None:
    assert hint_for(case.method, case.code, case.message) == case.hint


def test_cli_prints_the_hint_after_the_plain_message(daemon: BangerEnv) -> None:
    p = daemon.banger("image", "show", "nope")
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert lines[0].startswith("banger: image 'nope' not found (op-"), p.stderr
    assert lines[1] == "hint: banger image list", p.stderr
    p = daemon.banger("kernel", "show", "nope")
    assert p.returncode == 1
    assert "hint: banger kernel list (local)" in p.stderr, p.stderr
    assert "`banger" not in p.stderr, p.stderr
