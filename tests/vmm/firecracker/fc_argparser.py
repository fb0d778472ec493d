"""Firecracker's own command-line parser, ported for the fakes (`fake_firecracker`, `fake_jailer`).

Source: firecracker-microvm/firecracker v1.16.1 (commit e527ccfc54495dabac96f1835db61a40afa15115),
`src/utils/src/arg_parser.rs`. Both real binaries parse with it, so the fakes must too: only
`--name` arguments that the binary declares, each at most once unless `allow_multiple`, a value
never starting with `--`, everything after the first `--` kept aside as extra arguments, and
`--help`/`-h`/`--version` anywhere short-circuit the rest. The error texts are the
`UtilsArgParserError` doc comments (displaydoc), verbatim.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ARG_PREFIX = "--"
ARG_SEPARATOR = "--"


class ArgParserError(Exception):
    """`UtilsArgParserError`: `kind` is the Rust variant, `args` its fields, str() its Display."""

    TEXTS = {
        "ForbiddenArgument": "Argument '{1}' cannot be used together with argument '{0}'.",
        "MissingArgument": "Argument '{0}' required, but not found.",
        "MissingValue": "The argument '{0}' requires a value, but none was supplied.",
        "UnexpectedArgument": "Found argument '{0}' which wasn't expected, or isn't valid in "
        "this context.",
        "DuplicateArgument": "The argument '{0}' was provided more than once.",
    }

    def __init__(self, kind: str, *args: str) -> None:
        self.kind = kind
        self.fields = args
        super().__init__(self.TEXTS[kind].format(*args))

    def debug(self) -> str:
        """Rust's `{:?}` of the variant, e.g. `DuplicateArgument("id")`."""
        return f"{self.kind}({', '.join(_rust_debug_str(a) for a in self.fields)})"


def _rust_debug_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class Argument:
    name: str
    takes_value: bool = False
    required: bool = False
    allow_multiple: bool = False
    default: str | None = None
    requires: str | None = None
    forbids: tuple[str, ...] = ()


@dataclass
class Arguments:
    values: dict[str, str | list[str] | bool] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    defaults: dict[str, str] = field(default_factory=dict)

    def single(self, name: str) -> str | None:
        v = self.values.get(name, self.defaults.get(name))
        return v if isinstance(v, str) else None

    def multiple(self, name: str) -> list[str]:
        v = self.values.get(name)
        return v if isinstance(v, list) else []

    def flag(self, name: str) -> bool:
        return self.values.get(name) is True


def parse(spec: list[Argument], argv: list[str]) -> Arguments:
    """`Arguments::parse` on argv without argv[0]; raises `ArgParserError` as the Rust does."""
    table = {a.name: a for a in spec}
    out = Arguments(defaults={a.name: a.default for a in spec if a.default is not None})
    # split_args: the first "--" ends the binary's own arguments.
    if ARG_SEPARATOR in argv:
        i = argv.index(ARG_SEPARATOR)
        args, out.extra_args = argv[:i], argv[i + 1 :]
    else:
        args = list(argv)
    if "--help" in args or "-h" in args:
        out.values = {"help": True}
        return out
    if "--version" in args:
        out.values = {"version": True}
        return out
    it = iter(args)
    for arg in it:
        if not arg.startswith(ARG_PREFIX):
            raise ArgParserError("UnexpectedArgument", arg)
        name = arg[len(ARG_PREFIX) :]
        argument = table.get(name)
        if argument is None:
            raise ArgParserError("UnexpectedArgument", name)
        if not argument.allow_multiple and name in out.values:
            raise ArgParserError("DuplicateArgument", name)
        if argument.takes_value or argument.allow_multiple:
            val = next(it, None)
            if val is None or val.startswith(ARG_PREFIX):
                raise ArgParserError("MissingValue", name)
            if argument.allow_multiple:
                prev = out.values.get(name, [])
                assert isinstance(prev, list)
                out.values[name] = [*prev, val]
            else:
                out.values[name] = val
        else:
            out.values[name] = True
    # validate_requirements: every argument in name order (a BTreeMap in the Rust).
    for argument in sorted(spec, key=lambda a: a.name):
        given = argument.name in out.values
        if argument.required and not given:
            raise ArgParserError("MissingArgument", argument.name)
        if given:
            if argument.requires and f"--{argument.requires}" not in args:
                raise ArgParserError("MissingArgument", argument.requires)
            for other in argument.forbids:
                if f"--{other}" in args:
                    raise ArgParserError("ForbiddenArgument", argument.name, other)
    return out


# firecracker v1.16.1 `src/firecracker/src/main.rs` main_exec(): its ArgParser, argument by
# argument (the `--start-time-*`/`--parent-cpu-time-us` ones are what the jailer adds).
FIRECRACKER_ARGS = [
    Argument("api-sock", takes_value=True, default="/run/firecracker.socket"),
    Argument("id", takes_value=True, default="anonymous-instance"),
    Argument("seccomp-filter", takes_value=True, forbids=("no-seccomp",)),
    Argument("no-seccomp", forbids=("seccomp-filter",)),
    Argument("start-time-us", takes_value=True),
    Argument("start-time-cpu-us", takes_value=True),
    Argument("parent-cpu-time-us", takes_value=True),
    Argument("config-file", takes_value=True),
    Argument("metadata", takes_value=True),
    Argument("no-api", requires="config-file"),
    Argument("log-path", takes_value=True),
    Argument("level", takes_value=True),
    Argument("module", takes_value=True),
    Argument("show-level"),
    Argument("show-log-origin"),
    Argument("metrics-path", takes_value=True),
    Argument("boot-timer"),
    Argument("version"),
    Argument("snapshot-version"),
    Argument("describe-snapshot", takes_value=True),
    Argument("http-api-max-payload-size", takes_value=True, default="51200"),
    Argument("mmds-size-limit", takes_value=True),
    Argument("enable-pci"),
]

# jailer v1.16.1 `src/jailer/src/main.rs` build_arg_parser().
JAILER_ARGS = [
    Argument("id", takes_value=True, required=True),
    Argument("exec-file", takes_value=True, required=True),
    Argument("uid", takes_value=True, required=True),
    Argument("gid", takes_value=True, required=True),
    Argument("chroot-base-dir", takes_value=True, default="/srv/jailer"),
    Argument("netns", takes_value=True),
    Argument("daemonize"),
    Argument("new-pid-ns"),
    Argument("cgroup", allow_multiple=True),
    Argument("resource-limit", allow_multiple=True),
    Argument("cgroup-version", takes_value=True, default="1"),
    Argument("parent-cgroup", takes_value=True),
    Argument("version"),
]


def validate_instance_id(value: str) -> str | None:
    """`utils::validators::validate_instance_id`: None when valid, else the error text."""
    if not 1 <= len(value) <= 64:
        return f"Invalid len ({len(value)});  the length must be between 1 and 64"
    for i, c in enumerate(value):
        if not (c == "-" or c.isalnum()):
            return f"Invalid char ({c}) at position {i}"
    return None
