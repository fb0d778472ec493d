"""Egress policy costs with real guests (QEMU TCG), side by side in one run.

    .venv/bin/python bench/bench_egress.py [--runs 3] [--mib 32] [--queries 20]

Builds the same two namespaces as tests/network/test_egress_e2e.py (the daemon, bridge and VMs
in one; a stand-in upstream resolver and web servers on TEST-NET addresses in the other) and
boots a restricted VM `r` (allowed.test) and an open NAT VM `o`. Measures:
- live allow: `vm.set --allow later.test` RPC round trip (the table rebuild included), and the
  time from sending it until the guest, retrying `getent` + HTTP in a loop, makes its first
  request to later.test (seen by the web server, host clock);
- throughput: the same HTTP download in `r` (allowed address) and `o` (open NAT), timed in
  the guest, medians of --runs; ratio r/o (goal >= 0.95);
- DNS: --queries lookups in a guest loop (busybox nslookup): through banger's resolver (`r`)
  vs the upstream directly (`o`); per-query time, process start included on both sides; and
  one cold lookup of a newly allowed name (upstream + admission in nftables).
Needs root, /dev/net/tun, and the debian-bookworm image (built on first use, ~1 min).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.conftest import _stop_daemon, make_env  # noqa: E402
from tests.network.egress_netns import ALLOWED_IP, LATER_IP, NET_SIDE, make_world  # noqa: E402
from tests.network.test_vm_network_e2e import NsEnv  # noqa: E402


def guest(e: NsEnv, vm: str, script: str, timeout: float = 300) -> str:
    p = e.banger("vm", "ssh", vm, "--", script, timeout=timeout)
    if p.returncode != 0:
        raise SystemExit(f"guest {vm}: {script!r} failed: {p.stderr}")
    return str(p.stdout)


def download_ms(e: NsEnv, vm: str, mib: int) -> float:
    script = (
        "getent hosts allowed.test >/dev/null 2>&1; s=$(date +%s%N); "
        f"/.banger/bin/busybox wget -q -O /dev/null http://{ALLOWED_IP}/bytes/{mib << 20} && "
        "e=$(date +%s%N) && echo $(( (e - s) / 1000 ))"
    )
    return int(guest(e, vm, script).strip().splitlines()[-1]) / 1000


def dns_ms(e: NsEnv, vm: str, server: str, n: int, name: str = "allowed.test") -> float:
    script = (
        f"s=$(date +%s%N); i=0; while [ $i -lt {n} ]; do "
        f"/.banger/bin/busybox nslookup {name} {server} >/dev/null || exit 1; "
        "i=$((i+1)); done; e=$(date +%s%N); echo $(( (e - s) / 1000 ))"
    )
    return int(guest(e, vm, script).strip().splitlines()[-1]) / 1000 / n


def live_allow(e: NsEnv, log: Path) -> tuple[float, float]:
    loop = (
        "nohup bash -c 'while :; do getent hosts later.test >/dev/null && "
        f'timeout 2 bash -c "exec 3<>/dev/tcp/{LATER_IP}/80 && '
        'printf \\"GET /first HTTP/1.0\\r\\n\\r\\n\\" >&3 && cat <&3" >/dev/null && exit 0; '
        "sleep 0.02; done' >/dev/null 2>&1 & sleep 0"
    )
    guest(e, "r", loop)
    time.sleep(2)  # the loop is running and being refused
    with e.be.client() as c:
        t0 = time.time()
        c.call("vm.set", {"refs": ["r"], "allow": ["later.test"]}, timeout=60)
        rpc = time.time() - t0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        hits = [ln.split() for ln in log.read_text().splitlines() if f" {LATER_IP} /first" in ln]
        if hits:
            return rpc, float(hits[0][0]) - t0
        time.sleep(0.01)
    raise SystemExit("the guest never reached later.test after the allow")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mib", type=int, default=32)
    ap.add_argument("--queries", type=int, default=20)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bg-egb-"))
    log = work / "requests.log"
    log.touch()
    # The image is built outside the namespaces (it needs the Debian mirror), then shared.
    builder = make_env("bgeb-img-")
    builder.banger("image", "pull", "debian-bookworm", check=True, timeout=1800)
    _stop_daemon(builder)
    world = make_world(log)
    be = make_env("bgeb-", network="bridge", cache_home=builder.root / "cache")
    be.write_config(
        f'upstream_dns = ["{NET_SIDE}"]\n[vm_defaults]\nmemory_mib = 512\ndisk_size = "2G"\n'
    )
    e = NsEnv(be, world.vm_ns)
    try:
        e.banger("image", "pull", "debian-bookworm", check=True, timeout=1800)
        e.banger("vm", "create", "--name", "r", "--allow", "allowed.test", check=True, timeout=900)
        e.banger("vm", "create", "--name", "o", "--nat", check=True, timeout=900)

        rpc, first = live_allow(e, log)
        print(
            f"live allow     vm.set RPC {rpc * 1000:7.1f} ms   first request {first * 1000:7.1f} ms"
        )

        r_runs, o_runs = [], []
        for _ in range(args.runs):  # alternate so host load hits both alike
            r_runs.append(download_ms(e, "r", args.mib))
            o_runs.append(download_ms(e, "o", args.mib))
        r_ms, o_ms = statistics.median(r_runs), statistics.median(o_runs)
        r_mbs, o_mbs = args.mib / (r_ms / 1000), args.mib / (o_ms / 1000)
        print(f"throughput     restricted {r_mbs:7.1f} MiB/s   open {o_mbs:7.1f} MiB/s"
              f"   ratio {r_mbs / o_mbs:5.2f}"
              f"   ({args.mib} MiB, median of {args.runs})")  # fmt: skip

        # Cold: the first answer for a newly allowed name (upstream + admission in nftables).
        e.banger("vm", "set", "r", "--allow", "other.test", check=True)
        cold = dns_ms(e, "r", "172.16.0.1", 1, "other.test")
        cold_direct = dns_ms(e, "o", NET_SIDE, 1, "other.test")
        print(f"dns (cold)     banger {cold:7.1f} ms/query   upstream {cold_direct:7.1f} ms/query"
              "   (first answer: upstream + nft admission)")  # fmt: skip
        ours = dns_ms(e, "r", "172.16.0.1", args.queries)
        direct = dns_ms(e, "o", NET_SIDE, args.queries)
        print(f"dns            banger {ours:7.1f} ms/query   upstream {direct:7.1f} ms/query"
              f"   ratio {ours / direct:5.2f}   ({args.queries} lookups)")  # fmt: skip
        print(json.dumps({"rpc_ms": rpc * 1000, "first_ms": first * 1000, "r_mibs": r_mbs,
                          "o_mibs": o_mbs, "dns_ms": ours, "dns_direct_ms": direct}))  # fmt: skip
    finally:
        for vm in ("r", "o"):
            e.banger("vm", "delete", vm, timeout=120)
        _stop_daemon(be)
        world.close()
        shutil.rmtree(be.root, ignore_errors=True)
        shutil.rmtree(builder.root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces, bridge, TAPs)")
    main()
