"""boothsync: capture at the stall, sync to HQ."""

__version__ = "0.1.0"
