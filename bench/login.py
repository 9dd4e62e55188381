"""The account every benchmark (run.py, tunnel.py, proxy.py) logs in as on its sshd's."""

from __future__ import annotations

import os
import pwd
import subprocess

LOGIN_USER = "deployer-test"  # the integration tests' unprivileged login (same name, same flags)


def login_user() -> str:
    """Who the benchmarks log in as on the jump host and the targets (created when root).

    As root: an unprivileged account with /bin/sh as its shell, like a deploy user. Logging in as
    root here would run root's ~/.bashrc (bash sources it for every command sshd starts) before
    each remote command — on this machine a pyenv init that can even block on a rehash lock — a
    per-command cost that would penalize tools running several remote commands. Without root:
    the current user.
    """
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    try:
        pwd.getpwnam(LOGIN_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--create-home", "--shell", "/bin/sh", LOGIN_USER], check=True
        )
    # a "!" password locks the account and sshd (without PAM) refuses even key logins
    subprocess.run(["usermod", "-p", "*", LOGIN_USER], check=True)
    return LOGIN_USER
