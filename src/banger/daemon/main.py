"""`bangerd`: run the daemon in the foreground (the CLI starts it in the background)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from banger import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bangerd", description="banger daemon")
    parser.add_argument("--version", action="version", version=f"bangerd {__version__}")
    parser.add_argument("--log-stderr", action="store_true", help="also log JSON lines to stderr")
    parser.add_argument(
        "--system",
        action="store_true",
        help="system mode (bangerd.service): /etc, /var/lib, /run paths, run as the install owner",
    )
    args = parser.parse_args(argv)
    # Everything the daemon (and the tools it runs) creates is the owner's alone: the database,
    # logs, disks, seed.ext4 with the guest's SSH host key (docs/security.md).
    os.umask(0o077)

    from banger.config import ConfigError, load_config
    from banger.daemon.app import Daemon
    from banger.daemon.lock import EXIT_ALREADY_RUNNING, AlreadyRunning, acquire
    from banger.daemon.logs import setup_logging
    from banger.paths import Paths, UnsafePathError

    paths = Paths.from_env()
    if args.system:
        from banger.paths import InstallError, read_install

        try:
            info = read_install()
        except InstallError as e:
            print(f"bangerd: {e}", file=sys.stderr)
            return 2
        if info is None:
            print("bangerd: --system needs `sudo banger system install` first", file=sys.stderr)
            return 2
        # The owner daemon never runs as root: privileged work goes through bangerd-root.
        if os.geteuid() != info.owner_uid:
            print(
                f"bangerd: in system mode bangerd runs as {info.owner_user} (uid "
                f"{info.owner_uid}), not uid {os.geteuid()}; use `banger system restart`",
                file=sys.stderr,
            )
            return 2
        paths = info.paths
    try:
        config = load_config(paths.config_file)
    except ConfigError as e:
        print(f"bangerd: {e}", file=sys.stderr)
        return 2
    try:
        # The lock comes before anything else touches the state dir, the database or the socket.
        paths.ensure_state_dir()
        lock = acquire(paths.lock_file, paths.socket)
    except AlreadyRunning as e:
        print(f"bangerd: {e}", file=sys.stderr)
        return EXIT_ALREADY_RUNNING
    except UnsafePathError as e:
        print(f"bangerd: {e}", file=sys.stderr)
        return 2
    try:
        paths.ensure()
        setup_logging(paths.daemon_log, config.log_level, also_stderr=args.log_stderr)
        Daemon.check_socket_path(paths.socket)
    except UnsafePathError as e:
        print(f"bangerd: {e}", file=sys.stderr)
        lock.release()
        return 2
    try:
        daemon = Daemon(paths, config)
        asyncio.run(daemon.run())
    finally:
        lock.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
