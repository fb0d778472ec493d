"""A fake `firecracker` executable: the contract double served on `--api-sock` like the real one.

Tests put a `firecracker` wrapper for this script on PATH, so the driver's real process
management (spawn, socket wait, signals, exit on Ctrl-Alt-Del, re-attach) is exercised. The guest
is simulated only as far as the host can observe it: boot lines on the serial console (stdout),
a vsock listener answering `CONNECT <port>` with `OK <n>` and echoing lines, and a reboot (the
process exits 0) on Ctrl-Alt-Del when the command line has `reboot=k`, as a real guest with an
i8042 would. The guest keeps its state in the double's simulated RAM (page 0: a boot id made at
boot; page 1: a value set over vsock), so a snapshot carries it and a restore brings it back:
over vsock, `boot-id` answers the boot id, `set X` stores X, `get` answers it; other lines echo.
Every API call is appended as a JSON line to $BANGER_FC_DOUBLE_LOG when set.

The command line goes through Firecracker's own parser and argument table (`fc_argparser`, from
firecracker v1.16.1 `src/utils/src/arg_parser.rs` and `src/firecracker/src/main.rs`): an unknown
or repeated argument (a second `--id`, say) exits 153 with the real message, as Firecracker does.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fc_argparser
from fc_argparser import ArgParserError
from fc_double import FirecrackerDouble

CALL_LOG = os.environ.get("BANGER_FC_DOUBLE_LOG", "")
# How the simulated guest behaves: "reboot" (init reboots on Ctrl-Alt-Del), "poweroff" (init
# powers off instead: the kernel halts and Firecracker keeps running), "error" (the guest payload
# fails before READY).
GUEST_MODE = os.environ.get("BANGER_FC_DOUBLE_GUEST", "reboot")
GUEST_PORTS = {
    int(p) for p in os.environ.get("BANGER_FC_DOUBLE_GUEST_PORTS", "1024").split(",") if p
}


def console(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def exit_soon(code: int) -> None:
    # Let the 204 reach the client first, as a guest reboot takes a moment.
    threading.Timer(0.05, os._exit, (code,)).start()


class Guest:
    def __init__(self) -> None:
        self.reboot_pending = False

    def on_start(self, fc: FirecrackerDouble) -> None:
        boot = fc.resources["boot-source"]
        console(f"fake-guest: Linux booting {boot['kernel_image_path']}")
        console(f"fake-guest: Kernel command line: {boot.get('boot_args', '')}")
        fc.write_page(0, uuid.uuid4().hex.encode())  # the boot id: a fresh guest
        console("fake-guest: up")
        if GUEST_MODE == "error":
            console("banger-guest: ERROR the image has no OpenSSH server")
        else:
            console("banger-guest: READY mode=fake")

    def on_restore(self, fc: FirecrackerDouble) -> None:
        console(f"fake-guest: restored boot-id {fc.read_page(0).decode()} state {fc.state}")

    def on_ctrl_alt_del(self, fc: FirecrackerDouble) -> None:
        if "reboot=k" not in fc.resources["boot-source"].get("boot_args", "").split():
            console("fake-guest: ctrl-alt-del ignored (no reboot=k: the reset would not exit)")
            return
        if fc.state == "Paused":
            self.reboot_pending = True  # vCPUs are stopped; the guest acts on resume
            return
        self.reboot(fc)

    def reboot(self, fc: FirecrackerDouble) -> None:
        if GUEST_MODE == "poweroff":
            console("[   12.345678] reboot: Power down")  # the VMM stays up, vCPUs halted
            return
        console("fake-guest: reboot: Restarting system")
        exit_soon(0)

    def on_state(self, fc: FirecrackerDouble, state: str) -> None:
        if state == "Running" and self.reboot_pending:
            self.reboot_pending = False
            self.reboot(fc)

    def on_vsock(self, fc: FirecrackerDouble, path: str) -> None:
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(path)
        srv.listen(8)
        threading.Thread(target=self._accept, args=(fc, srv), daemon=True).start()

    def _accept(self, fc: FirecrackerDouble, srv: socket.socket) -> None:
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=self._serve, args=(fc, conn), daemon=True).start()

    def _serve(self, fc: FirecrackerDouble, conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as f:
            words = f.readline().decode(errors="replace").split()
            ok = (
                len(words) == 2
                and words[0] == "CONNECT"
                and words[1].isdigit()
                and int(words[1]) in GUEST_PORTS
                and fc.state == "Running"
            )
            if not ok:
                return  # Firecracker closes the stream when the guest does not accept
            f.write(b"OK 1073741824\n")
            f.flush()
            for line in f:
                with fc.lock:
                    answer = self._command(fc, line)
                f.write(answer)
                f.flush()

    def _command(self, fc: FirecrackerDouble, line: bytes) -> bytes:
        words = line.rstrip(b"\n").split(b" ", 1)
        if words[0] == b"boot-id":
            return b"boot-id " + fc.read_page(0) + b"\n"
        if words[0] == b"set" and len(words) == 2:
            fc.write_page(1, words[1])
            return b"ok\n"
        if words[0] == b"get":
            return b"value " + fc.read_page(1) + b"\n"
        return b"echo " + line


def make_handler(fc: FirecrackerDouble) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            status, answer = fc.handle(self.command, self.path, raw)
            if CALL_LOG:
                call = fc.calls[-1]
                with open(CALL_LOG, "a") as log:
                    log.write(json.dumps(call.__dict__) + "\n")
            data = json.dumps(answer).encode() if answer is not None else b""
            self.send_response(status)
            if data:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
            if fc.fatal:
                # A failed snapshot load ends Firecracker (exit code 1, FcExitCode::GenericError).
                exit_soon(1)

        do_GET = do_PUT = do_PATCH = do_POST = do_DELETE = _any

    return Handler


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _arg_error(e: ArgParserError) -> int:
    """What firecracker v1.16.1 does on a bad command line (`src/firecracker/src/main.rs` main():
    the Display through the logger, which writes to stdout before --log-path is applied, the
    Debug on stderr, exit code `FcExitCode::ArgParsing` = 153)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000000000")
    line = f"{now} [anonymous-instance:main] "
    sys.stdout.write(
        f"{line}Arguments parsing error: {e} \n\nFor more information try --help.\n"
        f"{line}Firecracker exiting with error. exit_code=153\n"
    )
    sys.stdout.flush()
    print(f"Error: ParseArguments({e.debug()})", file=sys.stderr)
    return 153


def main(argv: list[str] | None = None) -> int:
    try:
        args = fc_argparser.parse(
            fc_argparser.FIRECRACKER_ARGS, sys.argv[1:] if argv is None else argv
        )
    except ArgParserError as e:
        return _arg_error(e)
    fc = FirecrackerDouble(instance_id=args.single("id") or "anonymous-instance")
    if args.flag("version"):
        print(f"Firecracker v{fc.version}\n")
        return 0
    if args.flag("help"):
        print(f"Firecracker v{fc.version}\n")
        return 0
    bad_id = fc_argparser.validate_instance_id(fc.instance_id)
    if bad_id:
        # main.rs: validate_instance_id(...).expect("Invalid instance ID") panics (abort).
        print(f"Invalid instance ID: {bad_id}", file=sys.stderr)
        return 134
    api_sock = args.single("api-sock") or ""
    if args.flag("no-api") or args.single("config-file"):
        print("fake firecracker: only the API mode is simulated", file=sys.stderr)
        return 2
    if os.path.exists(api_sock):
        print(f"Failed to open the API socket at: {api_sock}. Address in use.", file=sys.stderr)
        return 1
    guest = Guest()
    fc.on_start = guest.on_start
    fc.on_ctrl_alt_del = guest.on_ctrl_alt_del
    fc.on_state = guest.on_state
    fc.on_vsock = guest.on_vsock
    fc.on_restore = guest.on_restore
    with Server(api_sock, make_handler(fc)) as server:
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
