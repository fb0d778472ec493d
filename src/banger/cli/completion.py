"""`banger completion bash|zsh|fish`: print the shell completion script."""

from __future__ import annotations

import click


@click.command(short_help="Print the shell completion script for bash, zsh or fish.")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script. VM, image and kernel names complete from the running
    daemon (none is started for it).

    \b
      banger completion bash >> ~/.bashrc
      banger completion zsh  >> ~/.zshrc
      banger completion fish > ~/.config/fish/completions/banger.fish
    """
    from click.shell_completion import get_completion_class

    from banger.cli.main import cli

    cls = get_completion_class(shell)
    assert cls is not None
    comp = cls(cli, {}, "banger", "_BANGER_COMPLETE")
    click.echo(comp.source())
