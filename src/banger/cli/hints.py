"""What to run next after an error: the CLI's side of an error message.

Services say what was wrong in their own terms and know nothing of commands or flags; the SDK and
the MCP server show that plain message. The CLI prints it, then the hint this table gives for
(method, code) and the message's shape: `hint: banger vm start devbox`.

A rule matches when the method matches (an exact name, a prefix ending in `.`, or None for any
method, e.g. an error raised in the CLI process itself), the wire code is equal (None: any), and
the pattern is found in the message; the first matching rule wins, so a narrower shape goes before
a wider one.
The pattern's named groups fill the hint's `{placeholders}`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A quoted name as services print it: repr() of a str ('x', or "x" when it holds a quote).
_NAME = r"""(?:'(?P<name>[^']+)'|"(?P<dname>[^"]+)"|(?P<bare>[^\s;:,()']+))"""


@dataclass(frozen=True)
class Rule:
    method: str | None  # "vm.start", "vm." (every vm.* method), or None (any)
    code: str | None  # None: whatever the code (the shape alone decides)
    pattern: str
    hint: str

    def matches(self, method: str, code: str) -> bool:
        if self.code is not None and code != self.code:
            return False
        if self.method is None:
            return True
        if self.method.endswith("."):
            return method.startswith(self.method)
        return method == self.method


RULES: tuple[Rule, ...] = (
    # --- images ---
    Rule(
        "image.pull",
        None,  # the registry's answer decides the code: not found, unreachable, auth
        r"did you mean banger's built-in " + _NAME,
        "banger image pull {name}",
    ),
    Rule(
        None,
        "bad_request",
        r"the name " + _NAME + r" is reserved for banger's built-in",
        "banger image pull {name} gets the built-in image; pass another --name",
    ),
    Rule(
        None,
        "not_found",
        r"^image " + _NAME + r" not found; pull it",
        "banger image pull <oci-ref> --name {name}, or use the built-in debian-bookworm",
    ),
    Rule(None, "not_found", r"^image " + _NAME + r" not found", "banger image list"),
    Rule(
        None,
        "already_exists",
        r"^image " + _NAME + r" already exists",
        "banger image delete {name}, or pass another --name",
    ),
    Rule(
        "image.",
        "bad_request",
        r"either a kernel ref or kernel/initrd/modules files",
        "pass either --kernel-ref NAME or --kernel FILE [--initrd FILE] [--modules DIR]",
    ),
    Rule(
        "image.",
        "bad_request",
        r"initrd or modules directory needs a kernel file",
        "--initrd and --modules need --kernel FILE",
    ),
    Rule(
        "image.pull",
        "already_exists",
        r"^a kernel named " + _NAME + r" exists already",
        "pass --kernel-ref {name}, or --name for another image name",
    ),
    # --- kernels ---
    Rule(
        "kernel.import",
        "bad_request",
        r"^give a kernel file",
        "banger kernel import NAME --kernel FILE [--initrd FILE] [--modules DIR], or --from-host",
    ),
    Rule(
        "kernel.import",
        "bad_request",
        r"^importing the host's kernel takes",
        "--from-host does not combine with --kernel/--initrd/--modules",
    ),
    Rule(
        "kernel.import",
        "bad_request",
        r"^a host kernel version applies only",
        "banger kernel import NAME --from-host VERSION",
    ),
    Rule(
        None,
        "not_found",
        r"^kernel " + _NAME + r" not found; pull it",
        "banger kernel pull {name}, or banger kernel import {name} --from-host",
    ),
    Rule(
        None,
        "not_found",
        r"^kernel " + _NAME + r" is not in the catalog",
        "banger kernel catalog lists the kernels to pull",
    ),
    Rule(
        None,
        "not_found",
        r"^kernel " + _NAME + r" not found",
        "banger kernel list (local), banger kernel catalog (to pull), banger kernel import "
        "(your own)",
    ),
    Rule(
        "kernel.",
        "already_exists",
        r"^kernel " + _NAME + r" already exists",
        "banger kernel delete {name} first, or pass --force to replace it",
    ),
    Rule(
        None,
        "bad_request",
        r"^kernel " + _NAME + r" has no initramfs",
        "banger kernel import {name} --kernel FILE --modules DIR --force",
    ),
    # --- VMs ---
    Rule("vm.", "not_found", r"^vm " + _NAME + r" not found", "banger vm list"),
    Rule("vm.", "not_running", r"^vm " + _NAME + r" is ", "banger vm start {name}"),
    Rule(None, "conflict", r"^vm " + _NAME + r" is paused:", "banger vm resume {name}"),
    Rule(None, "conflict", r"^vm " + _NAME + r" is suspended[: (]", "banger vm start {name}"),
    Rule(
        "vm.snapshot.",
        "not_found",
        r"^vm " + _NAME + r" has no snapshot",
        "banger vm snapshot list {name}",
    ),
    Rule(
        "vm.set",
        "conflict",
        r"^vm " + _NAME + r" is running",
        "banger vm stop {name}, then vm set, then vm start {name}",
    ),
    # --- workspaces (also raised in the CLI process while it reads an export) ---
    Rule(
        None,
        "not_found",
        r"no workspace|prepare the workspace first",
        "banger vm workspace prepare VM PATH",
    ),
)


def hint_for(method: str, code: str, message: str) -> str | None:
    """The command to suggest after this error, or None."""
    for rule in RULES:
        if not rule.matches(method, code):
            continue
        m = re.search(rule.pattern, message)
        if m is None:
            continue
        groups = m.groupdict()
        name = groups.get("name") or groups.get("dname") or groups.get("bare") or ""
        return rule.hint.format(name=name)
    return None
