"""VM names: DNS labels (1-63 chars, a-z 0-9 '-', no leading/trailing '-'), and generated
adjective-noun names for VMs created without one."""

from __future__ import annotations

import secrets
from collections.abc import Container

MAX_LEN = 63

ADJECTIVES = (
    "able", "amber", "bold", "brave", "brisk", "calm", "clever", "cosy", "crisp", "curious",
    "daring", "deft", "eager", "early", "fair", "fancy", "fleet", "fond", "gentle", "glad",
    "golden", "grand", "happy", "hardy", "humble", "jolly", "keen", "kind", "lively", "lucky",
    "mellow", "merry", "mighty", "misty", "modest", "neat", "nimble", "noble", "plucky", "polite",
    "proud", "quick", "quiet", "rapid", "ready", "rosy", "rustic", "sharp", "shiny", "silent",
    "sleek", "smooth", "snappy", "sober", "solid", "spry", "steady", "sunny", "swift", "tidy",
    "trusty", "vivid", "warm", "wise", "witty", "zesty",
)  # fmt: skip
NOUNS = (
    "badger", "beaver", "bison", "cedar", "comet", "condor", "coral", "crane", "falcon", "ferret",
    "finch", "fjord", "gecko", "glacier", "harbor", "hawk", "heron", "ibis", "jackal", "koala",
    "lark", "lemur", "lynx", "maple", "marmot", "meadow", "mesa", "mole", "moose", "newt",
    "ocelot", "orca", "osprey", "otter", "owl", "panda", "pebble", "pine", "plover", "puffin",
    "quail", "raven", "reef", "robin", "salmon", "seal", "sparrow", "spruce", "stoat", "swan",
    "tapir", "tern", "thrush", "tiger", "trout", "tundra", "walrus", "willow", "wombat", "wren",
    "yak", "zebra",
)  # fmt: skip


class InvalidName(ValueError):
    pass


def validate_name(name: str) -> str:
    """`name` itself when valid; otherwise InvalidName saying what is wrong and where."""
    if not name:
        raise InvalidName("vm name is required")
    if len(name) > MAX_LEN:
        raise InvalidName(
            f"vm name {name!r} is {len(name)} characters; max is {MAX_LEN} (DNS label limit)"
        )
    for i, ch in enumerate(name, start=1):
        if not ("a" <= ch <= "z" or "0" <= ch <= "9" or ch == "-"):
            raise InvalidName(
                f"vm name {name!r} has invalid character {ch!r} at position {i} "
                f"(allowed: lowercase a-z, 0-9, '-'){_try(name)}"
            )
    if name.startswith("-") or name.endswith("-"):
        raise InvalidName(f"vm name {name!r} cannot start or end with '-'{_try(name)}")
    return name


def _try(name: str) -> str:
    """`; try 'bad-name'` for `Bad_Name`: the nearest valid name, when there is one."""
    out = "".join(c if "a" <= c <= "z" or "0" <= c <= "9" else "-" for c in name.lower())
    out = "-".join(part for part in out.split("-") if part)[:MAX_LEN].strip("-")
    return f"; try {out!r}" if out and out != name else ""


def generate_name(taken: Container[str]) -> str:
    """A free adjective-noun name (a numeric suffix only when many are taken)."""
    for _ in range(50):
        name = f"{secrets.choice(ADJECTIVES)}-{secrets.choice(NOUNS)}"
        if name not in taken:
            return name
    # Crowded: look through every pair (random order) before falling back to a suffix.
    pairs = [f"{a}-{n}" for a in ADJECTIVES for n in NOUNS]
    secrets.SystemRandom().shuffle(pairs)
    for name in pairs:
        if name not in taken:
            return name
    while True:
        name = f"{secrets.choice(ADJECTIVES)}-{secrets.choice(NOUNS)}-{secrets.randbelow(10000)}"
        if name not in taken:
            return name
