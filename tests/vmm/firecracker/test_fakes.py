"""The fake `firecracker` and `jailer` behave as the v1.16.1 sources define (fc_argparser.py).

A fake that is more lenient than the real binary hides bugs: the jailer passing `--id` while the
driver passed it again after `--` only failed on the real Firecracker (DuplicateArgument).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from banger.vmm.firecracker import FirecrackerDriver, JailerSettings, _Layout
from tests.vmm.firecracker.fc_argparser import JAILER_ARGS, ArgParserError, parse

HERE = Path(__file__).resolve().parent


def run_fake(script: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    p = subprocess.run(
        [sys.executable, str(HERE / script), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
        check=False,
    )
    return p.returncode, p.stdout, p.stderr


@pytest.mark.parametrize(
    ("args", "message", "debug"),
    [
        (
            ["--api-sock", "/tmp/x.sock", "--id", "a", "--id", "a"],
            "The argument 'id' was provided more than once.",
            'DuplicateArgument("id")',
        ),
        (
            ["--api-sock", "/tmp/x.sock", "--daemonize"],
            "Found argument 'daemonize' which wasn't expected, or isn't valid in this context.",
            'UnexpectedArgument("daemonize")',
        ),
        (
            ["stray"],
            "Found argument 'stray' which wasn't expected, or isn't valid in this context.",
            'UnexpectedArgument("stray")',
        ),
        (
            ["--api-sock", "--id", "a"],
            "The argument 'api-sock' requires a value, but none was supplied.",
            'MissingValue("api-sock")',
        ),
        (
            ["--no-api"],
            "Argument 'config-file' required, but not found.",
            'MissingArgument("config-file")',
        ),
    ],
    ids=["duplicate-id", "unknown-flag", "positional", "missing-value", "requires"],
)
def test_fake_firecracker_refuses_bad_command_lines_like_the_real_one(
    args: list[str], message: str, debug: str
) -> None:
    code, out, err = run_fake("fake_firecracker.py", *args)
    assert code == 153  # FcExitCode::ArgParsing
    assert (
        f"[anonymous-instance:main] Arguments parsing error: {message} \n\n"
        "For more information try --help.\n" in out
    )
    assert "Firecracker exiting with error. exit_code=153" in out
    assert err.strip() == f"Error: ParseArguments({debug})"


def test_fake_firecracker_accepts_what_the_jailer_adds() -> None:
    code, out, _ = run_fake(
        "fake_firecracker.py",
        "--id", "abc", "--start-time-us", "1", "--start-time-cpu-us", "2",
        "--parent-cpu-time-us", "3", "--api-sock", "/nonexistent/x.sock", "--version",
    )  # fmt: skip
    assert code == 0 and out.startswith("Firecracker v1.16.1")


def test_jailer_parser_keeps_what_follows_the_separator_and_needs_none() -> None:
    base = ["--id", "a", "--exec-file", "/x", "--uid", "1", "--gid", "1"]
    assert parse(JAILER_ARGS, [*base, "--", "--id", "b"]).extra_args == ["--id", "b"]
    assert parse(JAILER_ARGS, base).extra_args == []
    with pytest.raises(ArgParserError, match="The argument 'id' was provided more than once."):
        parse(JAILER_ARGS, [*base, "--id", "b"])
    with pytest.raises(ArgParserError, match="Argument 'exec-file' required, but not found."):
        parse(JAILER_ARGS, ["--id", "a"])
    many = parse(JAILER_ARGS, [*base, "--cgroup", "a.b=1", "--cgroup", "c.d=2"])
    assert many.multiple("cgroup") == ["a.b=1", "c.d=2"]


def _echo_exec(tmp_path: Path) -> Path:
    """An "exec file" that prints where it runs from and the argv the jailer gave it."""
    exe = tmp_path / "bin" / "firecracker"
    exe.parent.mkdir()
    exe.write_text('#!/bin/sh\nprintf \'%s\\n\' "$0" "$PWD" "$@"\n')
    exe.chmod(0o755)
    return exe


def test_fake_jailer_builds_the_jail_and_passes_its_own_flags(tmp_path: Path) -> None:
    exe = _echo_exec(tmp_path)
    base = tmp_path / "jail"
    base.mkdir()
    uid, gid = os.getuid(), os.getgid()
    common = [
        "--id", "vm-1", "--exec-file", str(exe), "--uid", str(uid), "--gid", str(gid),
        "--chroot-base-dir", str(base), "--cgroup-version", "2",
    ]  # fmt: skip
    code, out, err = run_fake("fake_jailer.py", *common, "--", "--api-sock", "run/fc.sock")
    assert code == 0, err
    root = (base / "firecracker" / "vm-1" / "root").resolve()
    lines = out.splitlines()
    # The copy in the jail runs, from the jail root, not the original.
    assert lines[:2] == [str(root / "firecracker"), str(root)]
    assert (root / "firecracker").read_bytes() == exe.read_bytes()
    assert (root / "firecracker").stat().st_ino != exe.stat().st_ino
    argv = lines[2:]
    assert argv[:2] == ["--id", "vm-1"]
    assert argv[2] == "--start-time-us" and argv[3].isdigit()
    assert argv[4] == "--start-time-cpu-us" and argv[5].isdigit()
    assert argv[6] == "--parent-cpu-time-us" and argv[7].isdigit()
    assert argv[8:] == ["--api-sock", "run/fc.sock"]
    for d in ("", "dev", "dev/net", "run"):
        st = (root / d).stat()
        assert (st.st_uid, st.st_mode & 0o777) == (uid, 0o700), d
    assert (root / "firecracker.pid").read_text().isdigit()
    # No `--` at all is fine too (a second run of the same id: the pid file must be gone).
    (root / "firecracker.pid").unlink()
    code, out, err = run_fake("fake_jailer.py", *common)
    assert code == 0, err
    assert out.splitlines()[2:4] == ["--id", "vm-1"] and len(out.splitlines()) == 10


def test_fake_jailer_refuses_like_the_real_one(tmp_path: Path) -> None:
    exe = _echo_exec(tmp_path)
    base = tmp_path / "jail"
    base.mkdir()
    common = ["--exec-file", str(exe), "--uid", "0", "--gid", "0", "--chroot-base-dir", str(base)]
    code, _, err = run_fake("fake_jailer.py", "--id", "a", "--id", "b", *common)
    assert code == 1
    assert err.splitlines() == [
        "Failed to parse arguments: The argument 'id' was provided more than once.",
        'Error: ArgumentParsing(DuplicateArgument("id"))',
    ]
    code, _, err = run_fake("fake_jailer.py", "--id", "a_b", *common)
    assert (code, err.splitlines()[0]) == (1, "Invalid instance ID: Invalid char (_) at position 1")
    # A hard link planted where the exec file is copied to: refused, nothing run.
    root = base / "firecracker" / "a" / "root"
    root.mkdir(parents=True)
    os.link(exe, root / "firecracker")
    code, out, err = run_fake("fake_jailer.py", "--id", "a", *common)
    assert (code, out) == (1, "")
    assert err.splitlines()[0] == f"Detected hard link at: {root / 'firecracker'}"


def test_jailed_argv_has_one_id_and_it_is_the_jailers(tmp_path: Path) -> None:
    driver = FirecrackerDriver(
        sys.executable, jailer=JailerSettings(binary=sys.executable, uid=1, gid=1)
    )
    lay = _Layout(tmp_path / "a", tmp_path / "v", fc_api="fc.sock", fc_vsock="v.sock")
    argv = driver._argv("0123456789ab", lay)
    split = argv.index("--")
    assert argv[split + 1 :] == ["--api-sock", "fc.sock"]
    assert argv.count("--id") == 1 and argv.index("--id") < split
    # Unjailed, Firecracker gets its id directly.
    plain = FirecrackerDriver(sys.executable)._argv("0123456789ab", lay)
    assert plain[1:] == ["--api-sock", "fc.sock", "--id", "0123456789ab"]
