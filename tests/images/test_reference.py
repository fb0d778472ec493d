"""Reference parsing, default names, transport choice and docker-config credentials."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from banger.images.reference import ReferenceError, parse_reference
from banger.images.registry import RegistryClient, docker_config_auths

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "registry", "repo", "tag", "digest", "name"),
    [
        ("debian", "docker.io", "library/debian", "latest", None, "debian"),
        ("alpine:3.19", "docker.io", "library/alpine", "3.19", None, "alpine-3.19"),
        ("docker.io/nginx/unit:1.2", "docker.io", "nginx/unit", "1.2", None, "unit-1.2"),
        ("index.docker.io/library/x", "docker.io", "library/x", "latest", None, "x"),
        ("ghcr.io/o/r/img:v1", "ghcr.io", "o/r/img", "v1", None, "img-v1"),
        ("localhost:5000/a/b", "localhost:5000", "a/b", "latest", None, "b"),
        ("127.0.0.1:5000/a:t", "127.0.0.1:5000", "a", "t", None, "a-t"),
        (f"quay.io/a/b@{DIGEST}", "quay.io", "a/b", None, DIGEST, "b-abababababab"),
        (f"quay.io/a/b:t@{DIGEST}", "quay.io", "a/b", "t", DIGEST, "b-t"),
    ],
)
def test_parse(text: str, registry: str, repo: str, tag: str | None, digest: str | None,
               name: str) -> None:  # fmt: skip
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repo, tag, digest)
    assert ref.default_name() == name
    assert ref.target == (digest or tag)


@pytest.mark.parametrize(
    "text", ["", "Upper/Case", "a b", "x@sha256:12", "host:99999999/x", "a//b", "x:bad tag"]
)
def test_bad_references(text: str) -> None:
    with pytest.raises(ReferenceError):
        parse_reference(text)


def test_plain_http_only_for_loopback_or_listed() -> None:
    def scheme(text: str, insecure: list[str] | None = None) -> str:
        return RegistryClient(parse_reference(text), insecure or []).scheme

    assert scheme("127.0.0.1:5000/a") == "http"
    assert scheme("localhost:5000/a") == "http"
    assert scheme("[::1]:5000/a") == "http"
    assert scheme("10.0.0.5:5000/a") == "https"
    assert scheme("10.0.0.5:5000/a", ["10.0.0.5:5000"]) == "http"
    assert scheme("registry.example.com/a", ["10.0.0.5:5000"]) == "https"
    assert scheme("debian") == "https"
    assert RegistryClient(parse_reference("debian")).base == (
        "https://registry-1.docker.io/v2/library/debian"
    )


def test_docker_config_auths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = {
        "auths": {
            "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pw1").decode()},
            "reg.example.com:5000": {"username": "u", "password": "p:with:colons"},
            "http://127.0.0.1:5001/": {"auth": base64.b64encode(b"me:p:2").decode()},
            "broken.example": {"auth": "%%%"},
        }
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert docker_config_auths() == {
        "docker.io": ("hub", "pw1"),
        "reg.example.com:5000": ("u", "p:with:colons"),
        "127.0.0.1:5001": ("me", "p:2"),
    }
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "missing"))
    assert docker_config_auths() == {}
