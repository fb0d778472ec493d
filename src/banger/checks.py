"""One host check's verdict (PASS / WARN / FAIL with a hint): what `banger doctor` prints.

Below both doctor.py and privhelper/install.py, so the system install's checks need not import
the doctor (and through it the VMM layer)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Status = Literal["PASS", "WARN", "FAIL"]


@dataclass(frozen=True)
class Check:
    status: Status
    name: str
    detail: str
    hint: str = ""
