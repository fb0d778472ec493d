"""A stand-in internet for egress tests, run inside its own network namespace.

    ip netns exec NS python3 tests/network/egress_world.py RESOLVER_IP RECORDS_JSON

Serves, until killed:
- DNS on RESOLVER_IP:53 (UDP): A records from RECORDS_JSON ({"name": "ip", ...}), TTL 60;
  unknown names NXDOMAIN.
- HTTP on :80 of every address: `hello from <address it was reached on>`; `/bytes/N` sends N
  bytes (throughput bench).
- TCP :9000: a stream of lines `tick <unix time>` every 0.1 s (established-connection tests).
Prints `ready` once every socket listens. With EGRESS_WORLD_LOG=FILE, each HTTP request is
appended to FILE as `<unix time> <address reached> <path>`.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import socketserver
import sys
import threading
import time

from dnslib import QTYPE, RCODE, RR, A, DNSRecord

CHUNK = b"x" * 65536


def serve_dns(ip: str, records: dict[str, str]) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((ip, 53))
    ready.release()
    while True:
        data, addr = sock.recvfrom(4096)
        try:
            req = DNSRecord.parse(data)
        except Exception:
            continue
        reply = req.reply()
        name = str(req.q.qname).rstrip(".").lower()
        if name not in records:
            reply.header.rcode = RCODE.NXDOMAIN
        elif req.q.qtype == QTYPE.A:
            reply.add_answer(RR(req.q.qname, QTYPE.A, rdata=A(records[name]), ttl=60))
        sock.sendto(reply.pack(), addr)


class Web(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        if LOG:
            with open(LOG, "a") as f:  # when each request arrived (the bench's stopwatch)
                f.write(f"{time.time():.6f} {self.connection.getsockname()[0]} {self.path}\n")
        if self.path.startswith("/bytes/"):
            n = int(self.path.split("/")[2])
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            while n > 0:
                piece = CHUNK[: min(n, len(CHUNK))]
                self.wfile.write(piece)
                n -= len(piece)
            return
        body = f"hello from {self.connection.getsockname()[0]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class Threaded(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class Ticker(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        try:
            while True:
                self.request.sendall(f"tick {time.time():.3f}\n".encode())
                time.sleep(0.1)  # the stream's pace (what the cut is measured against)
        except OSError:
            return


class TickServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


ready = threading.Semaphore(0)
LOG = os.environ.get("EGRESS_WORLD_LOG", "")

if __name__ == "__main__":
    resolver_ip, records_json = sys.argv[1], sys.argv[2]
    records = {k.lower(): v for k, v in json.loads(records_json).items()}
    threading.Thread(target=serve_dns, args=(resolver_ip, records), daemon=True).start()
    ready.acquire()
    web = Threaded(("0.0.0.0", 80), Web)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    ticks = TickServer(("0.0.0.0", 9000), Ticker)
    threading.Thread(target=ticks.serve_forever, daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()
