"""VMs: names, specs and defaults, disks, the lifecycle service and async create operations."""
