"""What a child process inherits: this process's environment without the secrets deployer reads.

A secret deployer loaded is never passed on (DESIGN principle 3): ``deployer agent -- CMD``, the
tunnel's ssh and its ProxyCommand, a push's ProxyCommand and the hooks ``deployer serve`` runs
all start with the environment this module returns. It drops every variable a secret can arrive
in, whatever its value, so that a hook running ``npm run migrate`` cannot read the webhook secret
and a command given to ``deployer agent`` cannot read the key the agent holds for it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping

# Shell-style patterns of the variables that carry secrets deployer reads (case-sensitive, as
# the environment is). CREDENTIALS_DIRECTORY is where systemd's LoadCredential= puts the
# service's key, webhook secret or token files.
SECRET_VARIABLES: tuple[str, ...] = (
    "SSH_*PRIVATE_KEY*",  # SSH_PRIVATE_KEY, SSH_JUMP_PRIVATE_KEY and their passphrases
    "*_PASSPHRASE",
    "SSH_KEY",  # jnovack/autossh's key variable, read by `deployer tunnel --autossh-env`
    "DEPLOYER_*SECRET*",  # DEPLOYER_WEBHOOK_SECRET
    "DEPLOYER_*TOKEN*",  # DEPLOYER_GITLAB_TOKEN
    "GITLAB_TOKEN",  # `deployer setup gitlab`'s API token
    "DEPLOYER_PROXY_PASSWORD",
    "CREDENTIALS_DIRECTORY",
)


def is_secret(name: str) -> bool:
    """Whether a variable of this name may hold a secret deployer reads."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in SECRET_VARIABLES)


def child_environment(
    parent: Mapping[str, str], *, keep: Iterable[str] = (), extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """parent without its secret variables (those named in keep excepted), then extra on top."""
    kept = set(keep)
    env = {name: value for name, value in parent.items() if name in kept or not is_secret(name)}
    env.update(extra or {})
    return env
