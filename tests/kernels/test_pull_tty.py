"""Ctrl-C during `banger kernel pull` at a terminal: the CLI waits for the daemon to cancel."""

from __future__ import annotations

import json

from tests.conftest import BangerEnv
from tests.kernels.conftest import Served, needs_host_kernel
from tests.kernels.test_pull import _leftovers, cat_env  # noqa: F401  (fixture)
from tests.tty import finish, spawn, wait_for

pytestmark = needs_host_kernel


def test_ctrl_c_mid_pull_returns_after_the_cleanup(cat_env: BangerEnv, served: Served) -> None:  # noqa: F811
    cat_env.banger("daemon", "start", check=True)
    staging = cat_env.paths.staging_dir
    child = spawn(cat_env, "kernel", "pull", "slow")
    # The download is under way once its partial tarball sits in staging.
    wait_for(child, lambda: staging.is_dir() and any(staging.iterdir()), timeout=30)
    child.sendintr()
    status, out = finish(child, timeout=60)
    # Checked at once, without polling: the CLI returned only after the daemon cleaned up (it
    # used to exit at once, leaving the partial download for the daemon to remove later).
    assert _leftovers(cat_env) == []
    assert status == 130, out
    assert "interrupted; the daemon cancelled the operation (nothing half-made is left)" in out
    assert "Traceback" not in out and "aborted" not in out
    assert json.loads(cat_env.banger("kernel", "list", "--json", check=True).stdout) == []
