"""ssh's KnownHostsCommand on the OpenSSH path: ask deployer whether a host key is to be trusted.

ssh runs ``python -I -S knownhosts_command.py SOCKET HOP %H %t %K`` with the key a hop presented,
before it logs in there. This script passes the key to the deployer process that started ssh
(``verdicts.HostKeyBroker`` on SOCKET), which checks it by deployer's own rules, and prints a
known_hosts line for the key (under %H, the name ssh looks it up under) only when that process
trusts it: nothing otherwise, and ssh's strict checking refuses the hop (deployer reports why).
It runs without site-packages (-S) and may import only the standard library.
"""

from __future__ import annotations

import socket
import sys

TIMEOUT = 60.0  # the verdict is immediate; this only bounds a deployer that stopped answering
TRUSTED = b"trusted\n"


def main(argv: list[str]) -> int:
    """Ask SOCKET about HOP's key; print its known_hosts line if trusted. Exit 0 if refused too."""
    if len(argv) != 6:
        print("usage: knownhosts_command.py SOCKET HOP HOSTNAME KEYTYPE KEY", file=sys.stderr)
        return 2
    path, hop, hostname, key_type, key = argv[1:]
    if "NONE" in (key_type, key):
        return 0  # asked without a key (to order algorithms): nothing to vouch for
    request = f"{hop}\t{key_type}\t{key}\n".encode()
    reply = bytearray()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        try:
            sock.connect(path)
            sock.sendall(request)
            while len(reply) < len(TRUSTED):
                chunk = sock.recv(len(TRUSTED))
                if not chunk:
                    break
                reply += chunk
        except OSError as exc:
            print(f"deployer's host key check is gone: {exc}", file=sys.stderr)
            return 1
    if reply == TRUSTED:
        sys.stdout.write(f"{hostname} {key_type} {key}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
