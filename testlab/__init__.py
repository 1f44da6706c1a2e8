"""testlab: a test-lab orchestrator for pools of snapshot-reverted VMs and physical hosts."""

__version__ = "0.1.0"
