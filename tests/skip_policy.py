"""Tests never go quietly green: the one list of skips allowed on these machines.

A skip is allowed only for what cannot exist here — the real Firecracker binary and a KVM that
runs guests (/dev/kvm is nested PVM: stock guest kernels hang under it). Any other skip (a missing
host tool, a pinned kernel version, not being root) is turned into a failure naming the reason,
because scripts/setup-host.sh is supposed to provide everything else.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest

# Reason prefixes of the allowed skips, each with why it cannot run on these machines.
ALLOWED_SKIPS: dict[str, str] = {
    "real Firecracker suite needs firecracker and a KVM that runs guests": (
        "no Firecracker binary can be installed here, and /dev/kvm is nested PVM"
    ),
}


def skip_allowed(reason: str) -> bool:
    return any(reason.startswith(prefix) for prefix in ALLOWED_SKIPS)


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def apply_skip_policy(report: pytest.TestReport) -> None:
    """Turn a skip that is not allowed into a failure naming its reason."""
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    if skip_allowed(reason):
        return
    report.outcome = "failed"
    report.longrepr = (
        f"skip not allowed: {reason!r}. Only what cannot exist on these machines may skip "
        f"(tests/skip_policy.py ALLOWED_SKIPS); install what is missing (scripts/setup-host.sh)."
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    """The policy as a hook of its own (tests/conftest.py calls apply_skip_policy in its hook)."""
    outcome = yield
    apply_skip_policy(outcome.get_result())
