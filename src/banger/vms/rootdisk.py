"""A VM's root disk, as the VM service sees it: where it is and how `vm show` describes it.

Which format a new VM's root gets and which driver boots it is the VMM layer's call
(`vmm/plan.py`, reached through the daemon's `DriverRegistry`); the names are re-exported here
for callers that only describe disks.
"""

from __future__ import annotations

from banger.vmm.plan import BootPlan, boot_plan, describe_root_disk, make_root_disk, root_disk

__all__ = ["BootPlan", "boot_plan", "describe_root_disk", "make_root_disk", "root_disk"]
