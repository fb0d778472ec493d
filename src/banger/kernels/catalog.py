"""The kernel catalog: the embedded JSON plus an optional override (`kernel_catalog`: URL or file).

Override entries replace embedded ones with the same name and add the others. A relative
`tarball_url` is resolved against the catalog's own location, so a directory (or web folder)
holding `catalog.json` next to its tarballs works as is.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
from pydantic import ValidationError

from banger.errors import BangerError, InvalidInput, OperationFailed
from banger.kernels.model import Catalog, CatalogEntry, validate_name

FETCH_TIMEOUT_SECONDS = 30.0


def _parse(data: Any, origin: str) -> Catalog:
    try:
        catalog = Catalog.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise OperationFailed(
            f"kernel catalog {origin} is invalid at {where}: {first['msg']}; "
            "fix it or unset kernel_catalog in the config"
        ) from None
    if catalog.version != 1:
        raise OperationFailed(
            f"kernel catalog {origin} has version {catalog.version}; this banger reads version 1"
        )
    for entry in catalog.entries:
        try:
            validate_name(entry.name)
        except BangerError:
            raise OperationFailed(
                f"kernel catalog {origin} has an invalid entry name {entry.name!r}"
            ) from None
    return catalog


def embedded() -> Catalog:
    text = resources.files("banger.kernels").joinpath("data/catalog.json").read_text()
    return _parse(json.loads(text), "(embedded)")


def _is_url(ref: str) -> bool:
    return urlsplit(ref).scheme in ("http", "https", "file")


def _file_path(ref: str) -> Path:
    parts = urlsplit(ref)
    return Path(parts.path) if parts.scheme == "file" else Path(ref).expanduser()


async def _load_override(ref: str) -> tuple[Catalog, str]:
    """The override catalog and the base its relative tarball URLs resolve against."""
    scheme = urlsplit(ref).scheme
    if scheme in ("http", "https"):
        try:
            async with httpx.AsyncClient(timeout=FETCH_TIMEOUT_SECONDS) as client:
                resp = await client.get(ref, follow_redirects=True)
        except httpx.HTTPError as e:
            raise OperationFailed(
                f"cannot fetch kernel catalog {ref}: {e or type(e).__name__}"
            ) from None
        if resp.status_code != 200:
            raise OperationFailed(f"cannot fetch kernel catalog {ref}: HTTP {resp.status_code}")
        try:
            data = resp.json()
        except ValueError:
            raise OperationFailed(f"kernel catalog {ref} is not JSON") from None
        return _parse(data, ref), str(resp.url)
    if scheme and scheme != "file":
        raise InvalidInput(f"kernel_catalog {ref!r}: use an http(s) URL or a file path")
    path = _file_path(ref)
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise OperationFailed(
            f"cannot read kernel catalog {path}: {e.strerror}; fix kernel_catalog in the config"
        ) from None
    except ValueError:
        raise OperationFailed(f"kernel catalog {path} is not JSON") from None
    return _parse(data, str(path)), path.resolve().as_uri()


def _absolute(entry: CatalogEntry, base: str) -> CatalogEntry:
    if _is_url(entry.tarball_url):
        return entry
    return entry.model_copy(update={"tarball_url": urljoin(base, entry.tarball_url)})


async def load(override: str | None) -> list[tuple[CatalogEntry, str]]:
    """All entries, sorted by name, each with where it came from ("embedded" or the override)."""
    merged: dict[str, tuple[CatalogEntry, str]] = {
        e.name: (e, "embedded") for e in embedded().entries
    }
    if override:
        catalog, base = await _load_override(override)
        for e in catalog.entries:
            merged[e.name] = (_absolute(e, base), override)
    return [merged[k] for k in sorted(merged)]


async def lookup(override: str | None, name: str) -> CatalogEntry | None:
    for entry, _origin in await load(override):
        if entry.name == name:
            return entry
    return None
