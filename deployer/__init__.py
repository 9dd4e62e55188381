"""deployer: agentless, atomic deploys from CI through jump hosts and reverse tunnels."""

__version__ = "0.1.0"
