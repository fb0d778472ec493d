"""Moved to `banger.request` (below the services); this alias goes once nothing imports it."""

from banger.request import RequestContext

__all__ = ["RequestContext"]
