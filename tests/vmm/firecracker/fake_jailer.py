"""A fake `jailer`: checks its arguments and the jail the driver prepared, then runs Firecracker.

The real jailer pivot_roots into `<chroot-base>/<exec name>/<id>/root`, drops to uid:gid and
execs Firecracker, so relative API paths resolve inside the jail. This fake changes into that
directory instead (no pivot_root; no privilege drop unless $BANGER_FAKE_JAILER_DROP=1, since the
double must otherwise still reach the test's files) and execs `--exec-file` with the arguments
after `--`. Its argv is written as JSON to $BANGER_FAKE_JAILER_ARGV when set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main() -> int:
    argv = sys.argv[1:]
    if "--" not in argv:
        print("jailer: the Firecracker arguments must follow `--`", file=sys.stderr)
        return 2
    split = argv.index("--")
    p = argparse.ArgumentParser(prog="jailer")
    p.add_argument("--id", required=True)
    p.add_argument("--exec-file", required=True)
    p.add_argument("--uid", type=int, required=True)
    p.add_argument("--gid", type=int, required=True)
    p.add_argument("--chroot-base-dir", default="/srv/jailer")
    p.add_argument("--cgroup-version", choices=["1", "2"], default="1")
    p.add_argument("--cgroup", action="append", default=[])
    p.add_argument("--parent-cgroup")
    p.add_argument("--netns")
    args = p.parse_args(argv[:split])
    if os.geteuid() != 0:
        print("jailer: must run as root", file=sys.stderr)
        return 1
    if not os.path.isabs(args.exec_file) or not os.access(args.exec_file, os.X_OK):
        print(
            f"jailer: --exec-file {args.exec_file} is not an executable absolute path",
            file=sys.stderr,
        )
        return 1
    root = Path(args.chroot_base_dir) / Path(args.exec_file).name / args.id / "root"
    if not root.is_dir():
        print(f"jailer: no chroot at {root}", file=sys.stderr)
        return 1
    if os.environ.get("BANGER_FAKE_JAILER_ARGV"):
        Path(os.environ["BANGER_FAKE_JAILER_ARGV"]).write_text(json.dumps(argv))
    os.chdir(root)
    if os.environ.get("BANGER_FAKE_JAILER_DROP") == "1":
        # As the real jailer does before exec: Firecracker runs as --uid/--gid. Through setpriv,
        # which execs with root's credentials still in force, so an interpreter the owner cannot
        # reach (the test venv's) still starts: the real jailer runs its own copy in the jail.
        fc = [args.exec_file, *argv[split + 1 :]]
        os.execv(
            "/usr/bin/setpriv",
            ["setpriv", f"--reuid={args.uid}", f"--regid={args.gid}", "--clear-groups", *fc],
        )
    os.execv(args.exec_file, [args.exec_file, *argv[split + 1 :]])


if __name__ == "__main__":
    sys.exit(main())
