"""`banger kernel catalog|pull` against a real daemon and a loopback HTTP catalog."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from tests.conftest import BangerEnv
from tests.kernels.conftest import KVER, Served, needs_host_kernel
from tests.waiting import wait_until

pytestmark = needs_host_kernel


def _leftovers(env: BangerEnv) -> list[str]:
    """Everything a failed pull could have left: kernel dirs and staging entries."""
    p = env.paths
    found = []
    for d in (p.kernels_dir, p.staging_dir):
        if d.is_dir():
            found += [str(x) for x in d.iterdir()]
    return found


@pytest.fixture
def cat_env(banger_env: BangerEnv, served: Served) -> BangerEnv:
    banger_env.write_config(f'kernel_catalog = "{served.catalog_url}"\n')
    return banger_env


def test_catalog_lists_entries_pulled_or_available(cat_env: BangerEnv, served: Served) -> None:
    out = cat_env.banger("kernel", "catalog", "--json", check=True)
    items = {i["name"]: i for i in json.loads(out.stdout)}
    assert set(items) == set(served.entries)
    assert {i["state"] for i in items.values()} == {"available"}
    # Relative tarball URLs resolve against the catalog's URL.
    assert items["debian-zst"]["tarball_url"] == served.url + "debian-zst-x86_64.tar.zst"

    cat_env.banger("kernel", "pull", "debian-zst", check=True)
    table = cat_env.banger("kernel", "list", "--available", check=True).stdout
    line = next(x for x in table.splitlines() if x.startswith("debian-zst "))
    assert "pulled" in line
    other = next(x for x in table.splitlines() if x.startswith("debian-gz "))
    assert "available" in other


def test_catalog_from_a_file_with_relative_urls(banger_env: BangerEnv, served: Served) -> None:
    banger_env.write_config(f'kernel_catalog = "{served.root / "catalog.json"}"\n')
    out = banger_env.banger("kernel", "catalog", "--json", check=True)
    items = {i["name"]: i for i in json.loads(out.stdout)}
    assert items["debian-gz"]["tarball_url"] == (served.root / "debian-gz-x86_64.tar.gz").as_uri()
    banger_env.banger("kernel", "pull", "debian-gz", check=True)
    shown = json.loads(banger_env.banger("kernel", "show", "debian-gz", "--json").stdout)
    assert shown["source"] == "pull:" + (served.root / "debian-gz-x86_64.tar.gz").as_uri()


def test_empty_embedded_catalog_says_how_to_add_one(banger_env: BangerEnv) -> None:
    out = banger_env.banger("kernel", "catalog", check=True)
    assert "kernel_catalog" in out.stdout
    assert json.loads(banger_env.banger("kernel", "catalog", "--json").stdout) == []


@pytest.mark.parametrize("name", ["debian-zst", "debian-gz"])
def test_pull_installs_a_bootable_kernel(cat_env: BangerEnv, name: str) -> None:
    r = cat_env.banger("kernel", "pull", name, check=True)
    assert f"pulled kernel {name} ({KVER}; boots vmlinux, generated initramfs)" in r.stdout
    k = json.loads(cat_env.banger("kernel", "show", name, "--json", check=True).stdout)
    assert k["kernel_version"] == KVER and k["format"] == "bzImage"
    assert k["distro"] == "debian-12"
    assert Path(k["vmlinux"]).read_bytes()[:4] == b"\x7fELF"
    assert k["initrd_generated"] is True
    assert (Path(k["modules_dir"]) / "kernel/fs/ext4/ext4.ko").is_file()
    assert json.loads((Path(k["dir"]) / "manifest.json").read_text())["source"].startswith("pull:")
    assert [x for x in _leftovers(cat_env) if "staging" in x and "kernel-" in x] == []


def test_pull_existing_needs_force(cat_env: BangerEnv) -> None:
    cat_env.banger("kernel", "pull", "debian-zst", check=True)
    first = json.loads(cat_env.banger("kernel", "show", "debian-zst", "--json").stdout)
    again = cat_env.banger("kernel", "pull", "debian-zst")
    assert again.returncode == 1
    assert "already exists" in again.stderr and "--force" in again.stderr
    cat_env.banger("kernel", "pull", "debian-zst", "--force", check=True)
    second = json.loads(cat_env.banger("kernel", "show", "debian-zst", "--json").stdout)
    assert second["sha256"] == first["sha256"]
    assert second["imported_at"] >= first["imported_at"]
    assert sorted(os.listdir(cat_env.paths.kernels_dir)) == ["debian-zst"]


def test_wrong_sha_leaves_nothing_and_says_so(cat_env: BangerEnv, served: Served) -> None:
    r = cat_env.banger("kernel", "pull", "wrong-sha")
    assert r.returncode == 1
    assert "sha256 mismatch" in r.stderr
    assert "0" * 64 in r.stderr and "nothing was kept" in r.stderr
    assert _leftovers(cat_env) == []
    assert json.loads(cat_env.banger("kernel", "list", "--json").stdout) == []


def test_interrupted_download_leaves_nothing(cat_env: BangerEnv) -> None:
    r = cat_env.banger("kernel", "pull", "truncated")
    assert r.returncode == 1
    assert "download of" in r.stderr and "nothing was kept" in r.stderr
    assert _leftovers(cat_env) == []


def test_unknown_name_is_not_found(cat_env: BangerEnv) -> None:
    r = cat_env.banger("kernel", "pull", "no-such-kernel")
    assert r.returncode == 1
    assert "not in the catalog" in r.stderr


HOSTILE = {
    "hostile-traversal": "escapes the tree",
    "hostile-absolute": "absolute path",
    "hostile-symlink": "points outside the tree",
    "hostile-symlink-dir": "refusing",
    "hostile-via-link": "points outside the tree",
    "hostile-hardlink": "hard link",
    "hostile-device": "special file",
}


def test_hostile_tarballs_are_refused(cat_env: BangerEnv, served: Served) -> None:
    escaped = [
        served.root.parent / "escaped-traversal",
        Path("/tmp/banger-escaped-absolute"),
        cat_env.paths.state_dir / "escaped-via-link",
        cat_env.paths.staging_dir.parent / "escaped-via-link",
    ]
    for name, reason in HOSTILE.items():
        r = cat_env.banger("kernel", "pull", name)
        assert r.returncode == 1, name
        assert reason in r.stderr, (name, r.stderr)
        assert _leftovers(cat_env) == [], name
    for p in escaped:
        assert not p.exists(), p
    walk = [str(p) for p in cat_env.root.rglob("*escaped*")]
    assert walk == []


def test_client_going_away_mid_pull_leaves_nothing(cat_env: BangerEnv) -> None:
    cat_env.banger("daemon", "start", check=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(str(cat_env.paths.socket))
    request = {"version": 1, "method": "kernel.pull", "params": {"name": "slow"}, "progress": True}
    sock.sendall(json.dumps(request).encode() + b"\n")
    f = sock.makefile("rb")
    seen = 0
    while seen < 3:  # a few download progress lines: the pull is under way
        msg = json.loads(f.readline())
        assert "progress" in msg, msg
        seen += msg["progress"].get("stage") == "download"
    assert list(cat_env.paths.staging_dir.iterdir()) != []
    f.close()
    sock.close()
    wait_until(lambda: _leftovers(cat_env) == [], 20, "the cancelled pull's cleanup")
    # The daemon is fine afterwards and the name is free.
    assert json.loads(cat_env.banger("kernel", "list", "--json", check=True).stdout) == []


def test_daemon_start_removes_staging_leftovers(cat_env: BangerEnv) -> None:
    staging = cat_env.paths.staging_dir
    (staging / "kernel-crashed-0123abcd" / "modules").mkdir(parents=True)
    (staging / "kernel-crashed-0123abcd.tar").write_bytes(b"partial")
    cat_env.banger("daemon", "start", check=True)
    assert not any(p.name.startswith("kernel-") for p in staging.iterdir())


@pytest.mark.parametrize(
    ("catalog", "message"),
    [
        ("/nonexistent/catalog.json", "cannot read kernel catalog /nonexistent/catalog.json"),
        ("http://127.0.0.1:9/catalog.json", "cannot fetch kernel catalog"),
        ("BAD_JSON", "is not JSON"),
        ("BAD_ENTRY", "is invalid at entries.0.tarball_sha256"),
    ],
)
def test_broken_override_catalog_is_named(
    banger_env: BangerEnv, tmp_path: Path, catalog: str, message: str
) -> None:
    if catalog == "BAD_JSON":
        catalog = str(tmp_path / "c.json")
        Path(catalog).write_text("{nope")
    elif catalog == "BAD_ENTRY":
        catalog = str(tmp_path / "c.json")
        entry = {"name": "x", "tarball_url": "x.tar", "tarball_sha256": "abc"}
        Path(catalog).write_text(json.dumps({"version": 1, "entries": [entry]}))
    banger_env.write_config(f'kernel_catalog = "{catalog}"\n')
    r = banger_env.banger("kernel", "catalog")
    assert r.returncode == 1
    assert message in r.stderr, r.stderr


def test_rm_is_an_alias_of_delete(cat_env: BangerEnv) -> None:
    cat_env.banger("kernel", "pull", "debian-gz", check=True)
    assert "deleted kernel debian-gz" in cat_env.banger("kernel", "rm", "debian-gz").stdout
    assert _leftovers(cat_env) == []
