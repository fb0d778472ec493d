"""A fake `jailer` that does what the real one does, step by step, short of chroot and mknod.

Source: firecracker-microvm/firecracker v1.16.1 (commit e527ccfc54495dabac96f1835db61a40afa15115),
`src/jailer/src/main.rs` (main_exec, build_arg_parser, sanitize_process) and
`src/jailer/src/env.rs` (Env::new, Env::run, copy_exec_to_chroot, setup_jailed_folder,
save_exec_file_pid, exec_command). In that order it:

- closes inherited descriptors above 2 and clears the environment (except this suite's
  `BANGER_FC_DOUBLE_*` knobs, which the double needs and a real Firecracker ignores);
- parses its arguments with Firecracker's own parser (`fc_argparser`): `--` is optional and
  everything after it goes to Firecracker; a repeated or unknown argument is refused;
- checks `--id` (validate_instance_id), canonicalizes `--exec-file` (a file) and
  `--chroot-base-dir` (a directory), parses uid/gid/cgroup version and the cgroup settings;
- creates `<chroot-base>/<exec file name>/<id>/root` (create_dir_all) and copies the exec file
  into it (O_NOFOLLOW, refused when the target has other hard links, chowned to uid:gid);
- opens `--netns` and joins it (setns);
- "chroots": the fake changes into the jail root instead of chroot(2), so the test's files
  outside stay reachable; creates `/`, `/dev`, `/dev/net`, `/run` in it 0700 owned by uid:gid;
  the device nodes (/dev/kvm, /dev/net/tun, ...) are not made and cgroups are not written;
- writes `<exec file name>.pid` and execs the copy with
  `--id <id> --start-time-us N --start-time-cpu-us N --parent-cpu-time-us N <args after -->`,
  as uid:gid only when $BANGER_FAKE_JAILER_DROP=1 (otherwise the double stays root so that it
  can reach the test's files).

Errors are printed as the jailer prints them (`eprintln!("{}", e)` then Rust's `Error: {e:?}`)
and exit 1. Its argv is written as JSON to $BANGER_FAKE_JAILER_ARGV when set.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import stat
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fc_argparser
from fc_argparser import ArgParserError

FOLDER_HIERARCHY = ("/", "/dev", "/dev/net", "/run")  # env.rs
FOLDER_PERMISSIONS = 0o700
CLONE_NEWNET = 0x40000000


class JailerError(Exception):
    def __init__(self, display: str, debug: str) -> None:
        super().__init__(display)
        self.debug = debug


def _io(e: OSError) -> str:
    """Rust's io::Error Display."""
    return f"{os.strerror(e.errno or 0)} (os error {e.errno})"


def _us(clock: int) -> int:
    return time.clock_gettime_ns(clock) // 1000


def _copy_exec_to_chroot(exec_file: Path, chroot: Path, uid: int, gid: int) -> Path:
    dst = chroot / exec_file.name
    try:
        src = os.open(exec_file, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise JailerError(f"Failed to open {exec_file}: {_io(e)}", "Open") from None
    mode = stat.S_IMODE(os.fstat(src).st_mode)
    try:
        out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as e:
        raise JailerError(f"Failed to open {dst}: {_io(e)}", "Open") from None
    try:
        if os.fstat(out).st_nlink > 1:
            raise JailerError(f"Detected hard link at: {dst}", "HardLink")
        try:
            os.fchown(out, uid, gid)
        except OSError as e:
            raise JailerError(
                f"Failed to change owner for {dst}: {_io(e)}", "ChangeFileOwner"
            ) from None
        with os.fdopen(src, "rb", closefd=False) as r, os.fdopen(out, "wb", closefd=False) as w:
            shutil.copyfileobj(r, w)
    finally:
        os.close(src)
        os.close(out)
    return dst


def _join_netns(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise JailerError(f"Failed to open file {path}: {_io(e)}", "FileOpen") from None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise JailerError(
                f"Failed to join network namespace: netns: {os.strerror(err)} (os error {err})",
                "SetNetNs",
            )
    finally:
        os.close(fd)


def _setup_jailed_folder(chroot: Path, folder: str, uid: int, gid: int) -> None:
    path = chroot / folder.lstrip("/")
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, FOLDER_PERMISSIONS)
    os.chown(path, uid, gid)


def run(argv: list[str], argv_out: str, drop: bool) -> int:
    start_us = _us(time.CLOCK_MONOTONIC)
    start_cpu_us = _us(time.CLOCK_PROCESS_CPUTIME_ID)
    try:
        args = fc_argparser.parse(fc_argparser.JAILER_ARGS, argv)
    except ArgParserError as e:
        raise JailerError(
            f"Failed to parse arguments: {e}", f"ArgumentParsing({e.debug()})"
        ) from None
    if args.flag("help") or args.flag("version"):
        print("Jailer v1.16.1\n")
        return 0
    ident = args.single("id") or ""
    bad = fc_argparser.validate_instance_id(ident)
    if bad:
        raise JailerError(f"Invalid instance ID: {bad}", "InvalidInstanceId")
    exec_arg = args.single("exec-file") or ""
    try:
        exec_file = Path(os.path.realpath(exec_arg, strict=True))
    except OSError as e:
        raise JailerError(
            f"Failed to canonicalize path {exec_arg}: {_io(e)}", "Canonicalize"
        ) from None
    if not exec_file.is_file():
        raise JailerError(f"{exec_file} is not a file", "NotAFile")
    base_arg = args.single("chroot-base-dir") or ""
    try:
        base = Path(os.path.realpath(base_arg, strict=True))
    except OSError as e:
        raise JailerError(
            f"Failed to canonicalize path {base_arg}: {_io(e)}", "Canonicalize"
        ) from None
    if not base.is_dir():
        raise JailerError(f"{base} is not a directory", "NotADirectory")
    chroot = base / exec_file.name / ident / "root"
    ids = []
    for key, what in (("uid", "Invalid uid"), ("gid", "Invalid gid")):
        raw = args.single(key) or ""
        if not raw.isdigit() or int(raw) >= 2**32:
            raise JailerError(f"{what}: {raw}", key.capitalize())
        ids.append(int(raw))
    uid, gid = ids
    parent = args.single("parent-cgroup") or exec_file.name
    if parent.startswith("/") or any(c in (".", "..") for c in parent.split("/")):
        raise JailerError(
            "Parent cgroup path is invalid. Path should not be absolute or contain '..' or '.'",
            "CgroupInvalidParentPath",
        )
    version = args.single("cgroup-version") or ""
    if not version.isdigit() or int(version) > 255:
        raise JailerError(f"{version} is an invalid cgroup version specifier", "CgroupVersion")
    for cg in args.multiple("cgroup"):
        parts = cg.split("=")
        if len(parts) != 2 or not parts[1]:
            raise JailerError(f"Invalid format for cgroups: {cg}", "CgroupFormat")
        if parts[0].startswith("/") or any(c in (".", "..") for c in parts[0].split("/")):
            raise JailerError(f"Cgroup invalid file: {cg}", "CgroupInvalidFile")
    try:
        chroot.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise JailerError(f"Failed to create directory {chroot}: {_io(e)}", "CreateDir") from None
    jailed_exec = _copy_exec_to_chroot(exec_file, chroot, uid, gid)
    netns = args.single("netns")
    if netns:
        _join_netns(netns)
    os.chdir(chroot)  # the real jailer: chroot(2) here (pivot_root), then chdir("/")
    for folder in FOLDER_HIERARCHY:
        _setup_jailed_folder(chroot, folder, uid, gid)
    with open(chroot / f"{exec_file.name}.pid", "x") as pid_file:
        pid_file.write(str(os.getpid()))
    if argv_out:
        Path(argv_out).write_text(json.dumps(argv))
    cpu_us = _us(time.CLOCK_PROCESS_CPUTIME_ID) - start_cpu_us
    fc_argv = [
        str(jailed_exec),
        "--id", ident,
        "--start-time-us", str(start_us),
        "--start-time-cpu-us", str(_us(time.CLOCK_PROCESS_CPUTIME_ID)),
        "--parent-cpu-time-us", str(cpu_us),
        *args.extra_args,
    ]  # fmt: skip
    sys.stdout.flush()
    if drop:
        # The real jailer execs as --uid/--gid. Through setpriv, so that an interpreter the
        # owner cannot reach (the test venv's) still starts as it would in a real jail.
        os.execv(
            "/usr/bin/setpriv",
            ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *fc_argv],
        )
    os.execv(fc_argv[0], fc_argv)


def main() -> int:
    # sanitize_process(): close_range(3, MAX) and clean_env_vars().
    os.closerange(3, 65536)
    knobs = {k: v for k, v in os.environ.items() if k.startswith("BANGER_FC_DOUBLE_")}
    argv_out = os.environ.get("BANGER_FAKE_JAILER_ARGV", "")
    drop = os.environ.get("BANGER_FAKE_JAILER_DROP") == "1"
    os.environ.clear()
    os.environ.update(knobs)
    try:
        return run(sys.argv[1:], argv_out, drop)
    except JailerError as e:
        print(e, file=sys.stderr)
        print(f"Error: {e.debug}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
