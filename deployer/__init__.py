"""deployer: agentless, atomic deploys from CI through jump hosts and reverse tunnels."""

from deployer.imports import defer_import

__version__ = "0.1.0"

defer_import("invoke")  # paramiko loads it eagerly for ssh_config's Match exec only
