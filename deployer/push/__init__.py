"""deployer push over SSH: one or many targets, all-or-nothing, in batches or shards."""
