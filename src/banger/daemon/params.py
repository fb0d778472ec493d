"""Wire params → typed models, checked in full before a handler does any work.

Every handler's first line is `parse_params(Model, params)`, so everything a request can get
wrong — a NUL byte, a name with `..`, an overlong string, a size out of range, a wrong type — is
a `bad_request` naming the parameter, raised before an image is built or a file is touched.
String params use the types below; a plain `str` is still bounded and NUL-free (`Params`), and
`tests/daemon/test_dispatch.py` checks that every string param of every method has a bound.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from banger.errors import BangerError, InvalidInput
from banger.validation import clip, describe, quote

M = TypeVar("M", bound=BaseModel)

# PATH_MAX: no path longer than this can be opened anyway.
MAX_PATH_CHARS = 4096
# Any other string param (refs, git refs, tokens).
MAX_TEXT_CHARS = 512
# A list param (e.g. `refs` of `vm stop a b c`).
MAX_LIST_ITEMS = 256


def _has_control(text: str) -> str | None:
    """The first control character in `text` (NUL, newline, escape, C1, …), or None."""
    for ch in text:
        if unicodedata.category(ch) == "Cc":
            return ch
    return None


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain a NUL byte")
    return value


def _no_control(value: str) -> str:
    ch = _has_control(value)
    if ch == "\x00":
        raise ValueError("must not contain a NUL byte")
    if ch is not None:
        raise ValueError(f"must not contain control characters (found {ch!r})")
    return value


def _printable(value: str) -> str:
    _no_control(value)
    if value != value.strip() or any(c.isspace() for c in value):
        raise ValueError(f"must not contain whitespace: {quote(value)}")
    return value


def _absolute(value: str) -> str:
    _no_nul(value)
    if not value.startswith("/"):
        raise ValueError(f"must be an absolute path, got {quote(value)}")
    return value


def _via(check: Callable[[str], object]) -> Callable[[str], str]:
    """A service's own check as a param validator: its error says what is allowed."""

    def run(value: str) -> str:
        _no_control(value)
        try:
            check(value)
        except BangerError as e:  # the kernel/image checks raise InvalidInput
            raise ValueError(e.message) from None
        return value

    return run


def _kernel_name(value: str) -> object:
    from banger.kernels.model import validate_name

    return validate_name(value)


def _image_name(value: str) -> object:
    from banger.images.service import validate_name

    return validate_name(value)


def _oci_ref(value: str) -> object:
    from banger.images.reference import parse_reference

    return parse_reference(value)  # a built-in name (debian-bookworm) parses too


def _vm_name(value: str) -> object:
    from banger.vms.names import validate_name

    return validate_name(value)


def _guest_path(value: str) -> object:
    from banger.workspace.plan import validate_guest_path

    return validate_guest_path(value)


def _egress_rule(value: str) -> object:
    from banger.network.egress import parse_rule

    return parse_rule(value)


def _size(value: str) -> str:
    from banger.units import parse_size

    if len(value) > 64:  # parse_size quotes the text: refuse long ones here, clipped
        raise ValueError(f"size {quote(value)} is not understood; use a number with K, M, G or T")
    parse_size(value)
    return value


def _git_ref(value: str) -> str:
    _printable(value)
    if value.startswith("-"):
        raise ValueError(f"{quote(value)} cannot start with '-' (it would read as an option)")
    return value


_KERNEL_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~-]*$")


def _kernel_version(value: str) -> str:
    _printable(value)
    if not _KERNEL_VERSION.match(value):
        raise ValueError(
            f"{quote(value)} is not a kernel version (letters, digits and . _ + ~ -, "
            "e.g. 6.1.0-18-amd64)"
        )
    return value


_OP_ID = re.compile(r"^op-[0-9a-f]{12}$")


def _op_id(value: str) -> str:
    if not _OP_ID.match(value):
        raise ValueError(f"{quote(value)} is not an operation id (op- and 12 hex digits)")
    return value


def _bounded(n: int) -> Any:
    return Field(min_length=1, max_length=n)


# A VM, image or kernel reference (name, id or id prefix): looked up, never used as a path.
Ref = Annotated[str, _bounded(128), AfterValidator(_printable)]
# An OCI reference or a built-in image name (`image pull REF`).
OCIRef = Annotated[str, _bounded(MAX_TEXT_CHARS), AfterValidator(_via(_oci_ref))]
# Names that become directory or host names: the owning service's rules, checked up front.
VMName = Annotated[str, _bounded(63), AfterValidator(_via(_vm_name))]
ImageName = Annotated[str, _bounded(63), AfterValidator(_via(_image_name))]
KernelName = Annotated[str, _bounded(64), AfterValidator(_via(_kernel_name))]
# A path on the host (the CLI makes it absolute) or in the guest.
HostPath = Annotated[str, _bounded(MAX_PATH_CHARS), AfterValidator(_absolute)]
GuestPath = Annotated[str, _bounded(MAX_PATH_CHARS), AfterValidator(_via(_guest_path))]
# `8G`, `512M`, `1024`: parsed here so an out-of-range size fails before any work.
Size = Annotated[str, _bounded(MAX_TEXT_CHARS), AfterValidator(_size)]
# A git branch, ref or commit given to the workspace verbs (passed to git as an argument).
GitRef = Annotated[str, _bounded(256), AfterValidator(_git_ref)]
# A short word: a signal name.
Token = Annotated[str, _bounded(128), AfterValidator(_printable)]
# An installed distro kernel's version (`/boot/vmlinuz-<version>`).
KernelVersion = Annotated[str, _bounded(128), AfterValidator(_kernel_version)]
OpId = Annotated[str, _bounded(15), AfterValidator(_op_id)]
RefList = Annotated[list[Ref], Field(min_length=1, max_length=MAX_LIST_ITEMS)]
# An egress allow rule: name, *.wildcard, IPv4 address or CIDR, optional :port.
EgressRule = Annotated[str, _bounded(260), AfterValidator(_via(_egress_rule))]
EgressRules = Annotated[list[EgressRule], Field(max_length=MAX_LIST_ITEMS)]


class Params(BaseModel):
    """Base for RPC params: unknown fields are an error, so typos do not pass silently; every
    string is bounded and NUL-free even where a field forgets its type."""

    # strict: JSON types as sent ("yes" is not true, "4" is not 4): a coerced value would run
    # work nobody asked for (`image.cache.prune {"dry_run": "no"}` pruned for real).
    model_config = ConfigDict(extra="forbid", strict=True, str_max_length=MAX_PATH_CHARS)

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul_anywhere(cls, value: Any) -> Any:
        for text in _strings(value):
            _no_nul(text)
        return value


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []


def parse_params(model: type[M], params: dict[str, Any]) -> M:
    try:
        return model.model_validate(params)
    except ValidationError as e:
        raise InvalidInput(describe(e, noun="parameter", top="params")) from None


def to_json(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return value


__all__ = [
    "EgressRule",
    "EgressRules",
    "GitRef",
    "GuestPath",
    "HostPath",
    "ImageName",
    "KernelName",
    "KernelVersion",
    "OCIRef",
    "OpId",
    "Params",
    "Ref",
    "RefList",
    "Size",
    "Token",
    "VMName",
    "clip",
    "parse_params",
    "to_json",
]
