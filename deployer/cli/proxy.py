"""``deployer proxy-connect``: an OpenSSH ProxyCommand through an HTTP CONNECT or SOCKS5 proxy.

``deployer tunnel`` runs OpenSSH's ssh, which can only use a proxy through a ProxyCommand; this
hidden command is that ProxyCommand. It opens the connection with the same code as ``push``
and relays stdin and stdout byte for byte. The proxy password comes from the environment, so
it never shows in a process list.
"""

from __future__ import annotations

import os
import sys

import click

from deployer.cli.options import FiniteRange


@click.command(name="proxy-connect", hidden=True)
@click.option("--proxy", required=True, metavar="URL", help="http:// or socks5(h):// proxy.")
@click.option("--connect-timeout", type=FiniteRange(min=0.1), default=10.0, show_default=True)
@click.argument("host")
@click.argument("port", type=click.IntRange(1, 65535))
def proxy_connect(proxy: str, connect_timeout: float, host: str, port: int) -> None:
    """Connect to HOST:PORT through --proxy and relay stdin/stdout (an ssh ProxyCommand)."""
    from deployer.ssh.proxy import open_through, parse_proxy, relay

    spec = parse_proxy(proxy, os.environ)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    sock = open_through(spec, host, port, user="", timeout=connect_timeout, hop=f"ssh to {address}")
    with sock:
        relay(sock, sys.stdin.fileno(), sys.stdout.fileno())
