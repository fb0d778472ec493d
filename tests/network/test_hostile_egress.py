"""Hostile egress rules and requests against a real bangerd (user-mode networking, so nothing
here can reach a bridge): every case gets its exact error code and a message naming the
parameter and what is wrong, the daemon still answers `ping`, nothing is built, and nothing
outside the state dir changes (a sentinel directory outside is compared before and after)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from banger.errors import InvalidInput
from banger.network.egress import parse_rule
from tests.rpc.daemon_proc import Bangerd, bangerd


@dataclass(frozen=True)
class Case:
    id: str
    method: str
    params: dict[str, Any]
    code: str
    says: str  # a fragment of the message: what was wrong


def set_allow(rule: Any) -> dict[str, Any]:
    return {"refs": ["box"], "allow": [rule]}


# (id, rule, what the refusal says): through `vm.set --allow` (the same type serves vm.create).
RULES = [
    ("empty", "", "at least 1 character"),
    ("port-zero", "pypi.org:0", "port 0 is out of range"),
    ("port-too-big", "pypi.org:65536", "port 65536 is out of range"),
    ("port-name", "pypi.org:https", "port 'https' is not a number"),
    ("port-empty", "pypi.org:", "port '' is not a number"),
    ("only-port", ":443", "nothing before the port"),
    ("bare-star", "*", "a wildcard may only be a leading"),
    ("tld-wildcard", "*.com", "at least a domain and its suffix"),
    ("middle-wildcard", "foo.*.example.com", "a wildcard may only be a leading"),
    ("double-star", "**.example.com", "a wildcard may only be a leading"),
    ("empty-label", "a..example.com", "empty label"),
    ("leading-dot", ".example.com", "empty label"),
    ("hyphen-label", "-bad.example.com", "is not a DNS label"),
    ("long-label", "a" * 64 + ".com", "is not a DNS label"),
    ("long-name", ".".join(["abcdefghi"] * 25) + ".comxy", "longer than 253"),
    ("space", "exa mple.com", "whitespace"),
    ("newline", "example.com\n", "control characters"),
    ("nul", "example.com\x00", "NUL"),
    ("bidi-override", "\u202eexample.com", "whitespace or control characters"),
    ("nft-semicolon", "evil.com;flush", "is not a DNS label"),
    ("nft-brace", 'evil.com"}', "is not a DNS label"),
    ("host-bits", "10.0.0.1/8", "did you mean 10.0.0.0/8"),
    ("prefix-33", "10.0.0.0/33", "not a valid IPv4 address or CIDR"),
    ("octet-300", "300.1.1.1", "not a valid IPv4 address or CIDR"),
    ("three-octets", "1.2.3", "not a valid IPv4 address or CIDR"),
    ("ipv6", "::1", "IPv6 is not supported"),
    ("ipv6-bracket", "[2001:db8::1]:443", "IPv6 is not supported"),
    ("name-with-prefix", "example.com/24", "only an IPv4 network can have a /prefix"),
    ("idn-unicode", "exämple.com", "is not a DNS label"),
    ("banger-zone", "devbox.vm", "'.vm' names are banger's own VMs"),
    ("numeric-tld", "example.123", "looks like an address"),
    ("overlong", "a" * 300, "at most 260 characters"),
    ("not-a-string", 443, "should be a valid string"),
]

CASES = [Case(f"rule-{i}", "vm.set", set_allow(r), "bad_request", s) for i, r, s in RULES] + [
    Case(
        "create-bad-rule-before-any-work",
        "vm.create",
        {"allow": ["*.com"], "no_start": True},
        "bad_request",
        "at least a domain and its suffix",
    ),
    Case(
        "create-rules-need-bridge",
        "vm.create",
        {"allow": ["pypi.org"], "no_start": True},
        "bad_request",
        "egress rules need bridged networking",
    ),
    Case(
        "allow-as-string",
        "vm.set",
        {"refs": ["box"], "allow": "pypi.org"},
        "bad_request",
        "should be a valid list",
    ),  # fmt: skip
    Case(
        "allow-too-many",
        "vm.set",
        {"refs": ["box"], "allow": [f"h{i}.example.com" for i in range(257)]},
        "bad_request",
        "at most 256 items",
    ),
    Case(
        "egress-closed",
        "vm.set",
        {"refs": ["box"], "egress": "closed"},
        "bad_request",
        "'open' or 'restricted'",
    ),  # fmt: skip
    Case(
        "disallow-bad",
        "vm.set",
        {"refs": ["box"], "disallow": ["a..b"]},
        "bad_request",
        "empty label",
    ),  # fmt: skip
    Case("egress-ref-nul", "vm.egress", {"ref": "a\x00b"}, "bad_request", "NUL"),
    Case("egress-ref-overlong", "vm.egress", {"ref": "a" * 129}, "bad_request", "at most 128"),
    Case(
        "egress-extra-param", "vm.egress", {"ref": "box", "follow": True}, "bad_request", "follow"
    ),  # fmt: skip
    Case("egress-unknown-vm", "vm.egress", {"ref": "nope"}, "not_found", "vm 'nope' not found"),
]


def _tree(root: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p): (p.stat().st_mode, p.read_bytes() if p.is_file() else b"")
            for p in sorted(root.rglob("*"))}  # fmt: skip


@pytest.fixture(scope="module")
def hostile() -> Iterator[tuple[Bangerd, Path]]:
    outside = Path(tempfile.mkdtemp(prefix="bg-sentinel-", dir="/tmp"))
    (outside / "keep").write_text("sentinel\n")
    os.chmod(outside, 0o700)
    with bangerd("bg-he-") as d:
        yield d, outside
    shutil.rmtree(outside)


def _call(d: Bangerd, method: str, params: dict[str, Any]) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(60)
        s.connect(str(d.socket))
        s.sendall(json.dumps({"version": 1, "method": method, "params": params}).encode() + b"\n")
        answer: dict[str, Any] = json.loads(s.makefile("rb").readline())
        return answer


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_egress_request(hostile: tuple[Bangerd, Path], case: Case) -> None:
    d, outside = hostile
    before = _tree(outside)
    answer = _call(d, case.method, case.params)
    assert answer["ok"] is False, answer
    err = answer["error"]
    assert err["code"] == case.code, err
    assert case.says in err["message"], err
    if case.code == "bad_request" and case.method != "vm.create":
        assert "parameter '" in err["message"], err
    assert d.ping(timeout=10)["ok"] is True
    assert _tree(outside) == before
    images = d.env.paths.images_dir
    assert not images.exists() or list(images.iterdir()) == []


@pytest.mark.parametrize(("text", "says"), [(r, s) for _, r, s in RULES if isinstance(r, str)
                                            and len(r) <= 260 and r and "\x00" not in r
                                            and "\n" not in r])  # fmt: skip
def test_parser_alone_refuses_the_same_rules(text: str, says: str) -> None:
    # The CLI, SDK and config share parse_rule: it refuses what the RPC layer refuses.
    with pytest.raises(InvalidInput) as e:
        parse_rule(text)
    assert says in e.value.message


def test_the_corpus_is_big_enough() -> None:
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)
