"""`banger ssh-config [--install | --uninstall]`: make `ssh <name>.vm` work from any tool."""

from __future__ import annotations

from pathlib import Path

import click


def banger_ssh_config_path() -> Path:
    from banger.paths import Paths

    return Paths.detect().ssh_config_file


def user_ssh_config_path() -> Path:
    return Path.home() / ".ssh" / "config"


def ensure_base_file(path: Path) -> None:
    """The daemon keeps the file current; before it first runs, write the VM-independent part."""
    if path.exists():
        return
    from banger.config import load_config
    from banger.network import sshconfig
    from banger.paths import Paths

    paths = Paths.detect()
    cfg = load_config(paths.config_file)
    key = Path(cfg.ssh_key_path) if cfg.ssh_key_path else paths.ssh_dir / "id_ed25519"
    sshconfig.write_if_changed(path, sshconfig.render(key, paths.ssh_dir / "known_hosts"))


@click.command("ssh-config", short_help="Make `ssh <name>.vm` work from any tool.")
@click.option("--install", "action", flag_value="install", help="add the Include to ~/.ssh/config")
@click.option(
    "--uninstall", "action", flag_value="uninstall", help="remove the Include from ~/.ssh/config"
)
def ssh_config(action: str | None) -> None:
    """Show (or install) the ssh_config that makes `ssh <name>.vm` work."""
    from banger.network import sshconfig

    path = banger_ssh_config_path()
    user_config = user_ssh_config_path()
    if action == "install":
        ensure_base_file(path)
        changed = sshconfig.install(user_config, path)
        state = "added to" if changed else "already in"
        click.echo(f"Include {path} {state} {user_config}")
        return
    if action == "uninstall":
        changed = sshconfig.uninstall(user_config)
        state = "removed from" if changed else "was not in"
        click.echo(f"banger's Include {state} {user_config}")
        return
    click.echo(f"banger ssh_config: {path}")
    click.echo(f"Add this line at the top of {user_config} (or run `banger ssh-config --install`):")
    click.echo(f"Include {path}")
