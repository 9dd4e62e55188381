"""deployer: agentless, atomic deploys from CI through jump hosts and reverse tunnels."""

from deployer.imports import defer_import

# The one place the version is written: the build reads it (pyproject.toml), and a test checks
# that every pin users copy (templates, component, action, README, docs) names it.
__version__ = "0.1.0"

defer_import("invoke")  # paramiko loads it eagerly for ssh_config's Match exec only
