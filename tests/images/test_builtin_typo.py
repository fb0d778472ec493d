"""A typo of a built-in image name goes to Docker Hub and fails there: the error says what was
probably meant (whatever the registry answered: unreachable here, not found or auth elsewhere)."""

from __future__ import annotations

from tests.conftest import BangerEnv


def test_typo_of_a_builtin_name_suggests_it(daemon: BangerEnv) -> None:
    p = daemon.banger("image", "pull", "debian-bookwrm", timeout=120)
    assert p.returncode == 1
    assert "did you mean banger's built-in 'debian-bookworm'" in p.stderr, p.stderr
    # The command is the CLI's hint, not part of the daemon's message.
    assert "hint: banger image pull debian-bookworm" in p.stderr, p.stderr
    assert "`banger" not in p.stderr.split("hint:")[0]
    assert daemon.banger("image", "list", "--json", check=True).stdout.strip() == "[]"
