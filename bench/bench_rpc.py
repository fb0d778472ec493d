"""RPC ping latency and CLI cold start, side by side with their raw baselines, in one run.

    .venv/bin/python bench/bench_rpc.py [--pings 2000] [--starts 20]

- ping: banger's daemon (real bangerd, one persistent connection) vs a bare asyncio Unix-socket
  JSON-lines echo server doing the same round trip — the floor any Python daemon could reach.
- cold start: `banger --version` / `banger daemon status` vs `python -c pass` (interpreter start).
Goals from the foundation issue: ping p50 <= 2 ms, CLI cold start <= 150 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ECHO_SERVER = r"""
import asyncio, json, sys
async def main(path):
    async def on(reader, writer):
        while line := await reader.readline():
            req = json.loads(line)
            answer = {"ok": True, "result": {"method": req["method"]}}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
    srv = await asyncio.start_unix_server(on, path=path)
    print("ready", flush=True)
    await srv.serve_forever()
asyncio.run(main(sys.argv[1]))
"""


def _pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def ping_latencies(sock_path: Path, n: int) -> list[float]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(sock_path))
    f = s.makefile("rb")
    line = json.dumps({"version": 1, "method": "ping"}).encode() + b"\n"
    out = []
    for _ in range(n + 50):
        t0 = time.perf_counter()
        s.sendall(line)
        f.readline()
        out.append((time.perf_counter() - t0) * 1000)
    s.close()
    return out[50:]  # warm-up excluded


def cold_start(argv: list[str], env: dict[str, str], n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(argv, env=env, capture_output=True, check=False)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pings", type=int, default=2000)
    ap.add_argument("--starts", type=int, default=20)
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bgb-", dir="/tmp"))
    env = dict(os.environ)
    env.update(
        XDG_CONFIG_HOME=str(root / "c"),
        XDG_STATE_HOME=str(root / "s"),
        XDG_CACHE_HOME=str(root / "k"),
        XDG_RUNTIME_DIR=str(root / "r"),
    )
    (root / "r").mkdir(mode=0o700)
    banger = [str(Path(sys.executable).with_name("banger"))]
    subprocess.run([*banger, "daemon", "start"], env=env, check=True, capture_output=True)
    echo_sock = root / "echo.sock"
    echo = subprocess.Popen(
        [sys.executable, "-c", ECHO_SERVER, str(echo_sock)], stdout=subprocess.PIPE, text=True
    )
    assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
    try:
        daemon_sock = root / "r" / "banger" / "bangerd.sock"
        b = ping_latencies(daemon_sock, args.pings)
        r = ping_latencies(echo_sock, args.pings)
        print(f"ping over the socket ({args.pings} round trips, one connection)")
        print(f"  {'':<22}{'p50 ms':>10}{'p99 ms':>10}")
        print(f"  {'bangerd ping':<22}{_pct(b, 50):>10.3f}{_pct(b, 99):>10.3f}")
        print(f"  {'raw asyncio echo':<22}{_pct(r, 50):>10.3f}{_pct(r, 99):>10.3f}")
        print(f"  ratio p50 {_pct(b, 50) / _pct(r, 50):.2f}x   (goal: bangerd p50 <= 2 ms)")

        base = cold_start([sys.executable, "-c", "pass"], env, args.starts)
        ver = cold_start([*banger, "--version"], env, args.starts)
        status = cold_start([*banger, "daemon", "status"], env, args.starts)
        print(f"\nCLI cold start (median of {args.starts})")
        print(f"  python -c pass          {base:8.1f} ms")
        print(f"  banger --version        {ver:8.1f} ms   {ver / base:.2f}x python")
        print(f"  banger daemon status    {status:8.1f} ms   {status / base:.2f}x python")
        print("  goal: <= 150 ms")
    finally:
        echo.terminate()
        subprocess.run([*banger, "daemon", "stop"], env=env, capture_output=True, check=False)


if __name__ == "__main__":
    main()
