"""What a child process inherits: this process's environment without the secrets deployer reads;
and which variables a push hands to its hooks on the target (``--env``).

A secret deployer loaded is never passed on (DESIGN principle 3): ``deployer agent -- CMD``, the
tunnel's ssh and its ProxyCommand, a push's ProxyCommand and the hooks ``deployer serve`` runs
all start with the environment this module returns. It drops every variable a secret can arrive
in, whatever its value, so that a hook running ``npm run migrate`` cannot read the webhook secret
and a command given to ``deployer agent`` cannot read the key the agent holds for it.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping

from deployer.errors import ConfigError

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


# a POSIX shell variable name: what `export NAME` on the target accepts
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_variable_name(name: str, option: str = "--env") -> None:
    """Refuse (ConfigError) a name that cannot reach a hook: not a shell variable name (letters,
    digits, _; no digit first), or one of deployer's own DEPLOYER_* names."""
    if _VARIABLE_NAME.fullmatch(name) is None:
        raise ConfigError(
            f"{option} {name!r} is not a variable name — use letters, digits and _ (not starting"
            f" with a digit), as in {option} DATABASE_URL"
        )
    if name.startswith("DEPLOYER_"):
        raise ConfigError(
            f"{option} {name}: names starting with DEPLOYER_ are deployer's own (every hook gets"
            " DEPLOYER_RELEASE_DIR, DEPLOYER_PATH, ...) — choose another name"
        )


def hook_variables(entries: Iterable[str], env: Mapping[str, str]) -> dict[str, str]:
    """--env NAME (its value from env, the job's environment) and --env NAME=VALUE, by name.

    Refuses (ConfigError, naming the variable but never printing a value) the secrets deployer
    reads itself, which it never passes on, a name check_variable_name refuses, and a NAME
    missing from env.
    """
    variables: dict[str, str] = {}
    for entry in entries:
        name, given, value = entry.partition("=")
        if is_secret(name):
            raise ConfigError(
                f"--env {name}: deployer never passes its own secrets on ({', '.join(SECRET_VARIABLES)})"
                " — give the value to the hooks under another name"
            )
        check_variable_name(name)
        if not given:
            if name not in env:
                raise ConfigError(
                    f"--env {name}: {name} is not set in this job's environment — define it (a CI/CD"
                    f" variable, or `env:` of the step) or pass --env {name}=VALUE"
                )
            value = env[name]
        variables[name] = value
    return variables
