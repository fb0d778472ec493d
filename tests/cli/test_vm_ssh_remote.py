"""`vm ssh VM -- CMD…` keeps argument boundaries in the line the guest's shell runs."""

from __future__ import annotations

import subprocess

from banger.cli.vm import remote_line, ssh_remote


def _guest_shell(line: str) -> str:
    # sshd hands the remote line to the login shell as `sh -c LINE`: run it the same way.
    return subprocess.run(["sh", "-c", line], capture_output=True, text=True, check=True).stdout


def test_several_words_keep_their_boundaries_and_metacharacters() -> None:
    out = _guest_shell(remote_line(["printf", "%s\\n", "a b", "c;d", "$(echo x)", "'q'"]))
    assert out.splitlines() == ["a b", "c;d", "$(echo x)", "'q'"]


def test_one_word_is_a_shell_command_line_like_plain_ssh() -> None:
    assert _guest_shell(remote_line(["echo a && echo b"])).splitlines() == ["a", "b"]


def test_the_separator_click_keeps_is_dropped() -> None:
    # It used to reach ssh, which took it as its own end of options; quoted with the command
    # it made ssh fail with "unknown option -- -".
    assert ssh_remote(("--", "printf", "%s", "a b")) == ["printf %s 'a b'"]
    assert ssh_remote(("--", "true")) == ["true"]
    assert ssh_remote(("--",)) is None and ssh_remote(()) is None
    assert ssh_remote(("--", "--", "x")) == ["-- x"]  # only the first one is banger's
