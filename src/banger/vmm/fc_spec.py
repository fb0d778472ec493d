"""Firecracker's published API contract (Swagger 2.0), loaded from the copy shipped with banger.

`firecracker.yaml` next to this module is a byte-for-byte copy of
`src/firecracker/swagger/firecracker.yaml` at tag v1.16.1 (sha256 in `SPEC_SHA256`; provenance in
docs/firecracker.md). The driver validates every request body against the spec's definitions
before sending it, so a malformed call fails in banger with a message naming the field rather than
as a 400 from a VMM process on some user's host.
"""

from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

SPEC_FILE = "firecracker.yaml"
SPEC_SHA256 = "a514abec7b29700c5ca8bdaebbb960e4ffb46fe1fd4869094c6c63630a6fa41c"


@dataclass(frozen=True)
class Operation:
    method: str  # upper case: GET, PUT, PATCH
    template: str  # e.g. /drives/{drive_id}
    operation_id: str
    summary: str
    body_def: str | None  # name of the definition the body must match
    body_required: bool
    path_params: tuple[str, ...]
    pattern: re.Pattern[str]


def _yaml_loader() -> type[Any]:
    """A SafeLoader that reads booleans the YAML 1.2 way (true/false only).

    PyYAML follows YAML 1.1, where the `Logger.level` enum value `Off` would become False.
    """
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    resolvers = {
        ch: [(tag, rx) for tag, rx in lst if tag != "tag:yaml.org,2002:bool"]
        for ch, lst in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Loader.yaml_implicit_resolvers = resolvers
    Loader.add_implicit_resolver(  # type: ignore[no-untyped-call]
        "tag:yaml.org,2002:bool",
        re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
        list("tTfF"),
    )
    return Loader


def spec_text() -> str:
    return resources.files("banger.vmm").joinpath(SPEC_FILE).read_text(encoding="utf-8")


def _strict(definitions: dict[str, Any]) -> dict[str, Any]:
    """Forbid unknown fields in objects that do not allow them explicitly.

    Swagger 2.0 leaves `additionalProperties` open, but Firecracker's request types reject unknown
    fields; a misspelt key must fail here, not be silently ignored.
    """
    out = copy.deepcopy(definitions)
    for schema in out.values():
        if (
            isinstance(schema, dict)
            and schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
        ):
            schema["additionalProperties"] = False
    return out


class FirecrackerSpec:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.version: str = str(doc["info"]["version"])
        self.definitions: dict[str, Any] = _strict(doc["definitions"])
        self.operations: list[Operation] = []
        for template, methods in doc["paths"].items():
            names = tuple(re.findall(r"{(\w+)}", template))
            rx = "^" + re.sub(r"{(\w+)}", r"(?P<\1>[^/]+)", template) + "$"
            for method, op in methods.items():
                body = next((p for p in op.get("parameters", []) if p.get("in") == "body"), None)
                ref = body["schema"]["$ref"].rsplit("/", 1)[-1] if body else None
                self.operations.append(
                    Operation(
                        method=method.upper(),
                        template=template,
                        operation_id=op["operationId"],
                        summary=str(op.get("summary", "")),
                        body_def=ref,
                        body_required=bool(body and body.get("required")),
                        path_params=names,
                        pattern=re.compile(rx),
                    )
                )

    def find(self, method: str, path: str) -> tuple[Operation, dict[str, str]] | None:
        for op in self.operations:
            if op.method != method.upper():
                continue
            m = op.pattern.match(path)
            if m:
                return op, m.groupdict()
        return None

    @functools.cache  # noqa: B019 - one spec object lives for the whole process
    def _validator(self, definition: str) -> Any:
        import jsonschema  # type: ignore[import-untyped]

        schema = {"$ref": f"#/definitions/{definition}", "definitions": self.definitions}
        return jsonschema.Draft4Validator(schema)

    def errors(self, definition: str, value: Any) -> list[str]:
        """Every way `value` violates `definition`, as `field: message` strings (empty = valid)."""
        if definition not in self.definitions:
            raise KeyError(f"the Firecracker spec has no definition {definition!r}")
        out = []
        for e in sorted(self._validator(definition).iter_errors(value), key=str):
            where = ".".join(str(p) for p in e.absolute_path) or "(body)"
            out.append(f"{where}: {e.message}")
        return out


@functools.cache
def load_spec() -> FirecrackerSpec:
    import yaml

    doc = yaml.load(spec_text(), Loader=_yaml_loader())  # a SafeLoader subclass
    return FirecrackerSpec(doc)
