"""One target's deploy over any executor: probe and lock, upload, hooks, switch, revert, rollback."""
