"""`banger rpc schema`: the RPC contract (every method's params and result) as JSON Schema."""

from __future__ import annotations

import json

import click


@click.group(short_help="The daemon's RPC contract (for programs that speak it).")
def rpc() -> None:
    """The JSON RPC `bangerd` speaks on its socket (docs/rpc.md)."""


@rpc.command(short_help="Print every method's params and result as JSON Schema.")
@click.option(
    "--method",
    "methods",
    multiple=True,
    metavar="NAME",
    help="only this method (repeatable), e.g. --method vm.show",
)
def schema(methods: tuple[str, ...]) -> None:
    """Print {"methods": {NAME: {"params": SCHEMA, "result": SCHEMA}}} (JSON Schema Draft
    2020-12, methods sorted) for this banger's version. Needs no daemon."""
    import difflib

    from banger.daemon.contract import CONTRACT, schema_document
    from banger.validation import quote

    for name in methods:
        if name not in CONTRACT:
            # quote(): a pasted name's escape sequences print escaped, and cut to 120 characters.
            close = difflib.get_close_matches(name[:128], sorted(CONTRACT), n=3, cutoff=0.6)
            hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise click.BadParameter(
                f"no RPC method {quote(name)}.{hint} "
                "`banger rpc schema` without --method lists them all.",
                param_hint="'--method'",
            )
    doc = schema_document(list(methods) if methods else None)
    click.echo(json.dumps(doc, indent=2, sort_keys=True))
