"""The command lines of the OpenSSH path (pure): one ControlMaster ``ssh`` per hop, and what runs.

Every master reads no configuration file and trusts no known_hosts file: its connection is the
socket on its stdin and stdout (``ProxyCommand -``: deployer dials the first hop, or asks the
previous hop's master for a channel), its key comes from deployer's in-memory agent only, and
the host key it is shown is judged by deployer (``KnownHostsCommand``, see ``verdicts``).
Algorithms are preferred as on the paramiko path: the host key types known for the hop first,
curve25519 key exchange, AES-GCM.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from deployer.ssh.route import Endpoint

HOST_KEY_ALIAS = "deployer-hop"  # ssh looks the key up under this name; the broker knows the hop
# What paramiko offers too (no certificates, no SHA-1 ssh-rsa), in OpenSSH's order.
HOST_KEY_ALGORITHMS = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
)
# curve25519 first, as paramiko does: OpenSSH 9's default sntrup761 hybrid costs ~80 ms of CPU
# per connection here, which a fleet pays for every target.
KEX_FIRST = "^curve25519-sha256,curve25519-sha256@libssh.org"
# AES-GCM first: with AES-NI it costs the runner and every hop less CPU than chacha20-poly1305.
CIPHERS_FIRST = "^aes128-gcm@openssh.com,aes256-gcm@openssh.com"
ALIVE_INTERVAL = 15  # seconds between keepalives, as on the paramiko path
ALIVE_COUNT = 3  # unanswered keepalives before ssh gives the connection up


def config_word(text: str, *, expanded: bool = True) -> str:
    """text as one quoted word of an ssh option (argv_split's escapes; % doubled if expanded).

    Quoted, a file name may hold spaces; doubled, a % in it is not read as a token. ssh also
    expands ${VAR} in such values: a name holding that is refused.
    """
    if expanded and "${" in text:
        raise ValueError(f"{text!r} would be expanded by ssh")
    value = text.replace("%", "%%") if expanded else text
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def host_key_algorithms(known: Sequence[str]) -> str:
    """The hop's known algorithms first, then the rest (a known host must show a known type)."""
    first = [a for a in known if a in HOST_KEY_ALGORITHMS]
    return ",".join(first + [a for a in HOST_KEY_ALGORITHMS if a not in first])


@dataclass(frozen=True)
class MasterSpec:
    """What one hop's master needs besides its connection."""

    ssh: str
    hop: Endpoint
    control: str  # the ControlPath it listens on once logged in
    agent: str  # the in-memory agent's socket
    known_hosts_command: str
    host_key_algorithms: str
    timeout: float  # seconds for the banner exchange (ssh's ConnectTimeout)


def master_argv(spec: MasterSpec) -> list[str]:
    """ssh as a ControlMaster for one hop, over the connection on its stdin and stdout."""
    options = {
        "ControlMaster": "yes",
        "ControlPath": config_word(spec.control),
        "ControlPersist": "no",
        "ProxyCommand": "-",
        "BatchMode": "yes",
        "IdentityFile": "none",
        "IdentityAgent": config_word(spec.agent),
        "PreferredAuthentications": "publickey",
        "StrictHostKeyChecking": "yes",
        "UserKnownHostsFile": "/dev/null",
        "GlobalKnownHostsFile": "/dev/null",
        "KnownHostsCommand": spec.known_hosts_command,
        "HostKeyAlias": HOST_KEY_ALIAS,
        "HostKeyAlgorithms": spec.host_key_algorithms,
        "UpdateHostKeys": "no",
        "CheckHostIP": "no",
        "VerifyHostKeyDNS": "no",
        "KexAlgorithms": KEX_FIRST,
        "Ciphers": CIPHERS_FIRST,
        "ConnectTimeout": str(max(1, round(spec.timeout))),
        "ServerAliveInterval": str(ALIVE_INTERVAL),
        "ServerAliveCountMax": str(ALIVE_COUNT),
        "TCPKeepAlive": "yes",
        "ForwardAgent": "no",
        "ForwardX11": "no",
        "ClearAllForwardings": "yes",
        "PermitLocalCommand": "no",
        "LogLevel": "INFO",  # "open failed: ..." lines say why a jump host refused a channel
    }
    argv = [spec.ssh, "-F", "/dev/null", "-N"]
    for name, value in options.items():
        argv += ["-o", f"{name}={value}"]
    # `--`: the destination can never be read as an option, whatever it holds
    return [*argv, "-l", spec.hop.user, "-p", str(spec.hop.port), "--", spec.hop.host]


# Prints the command's process group (the session's, as sshd's "signal" request would reach)
# on the first line of stdout, then becomes the script: a command past its time limit is
# stopped with `kill -TERM -PGID` from a second session, since the mux protocol sends no signals.
_WITH_GROUP = 'read -r a b c d g e </proc/$$/stat 2>/dev/null; echo "$g"; exec /bin/sh -c "$1"'


def remote_command(script: str, *, report_group: bool) -> str:
    """The command line sent to run script with /bin/sh (whatever the login shell is)."""
    if report_group:
        return f"/bin/sh -c {shlex.quote(_WITH_GROUP)} sh {shlex.quote(script)}"
    return f"/bin/sh -c {shlex.quote(script)}"


def stop_command(group: int, signal: str) -> str:
    """The command that signals a whole process group on the target (dash and BusyBox take no --)."""
    return f"kill -{signal} -{group}"
