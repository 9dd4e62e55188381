"""The jump host's side of the tunnel: restricted authorized_keys lines per role, sshd_config lines,
and the forced command that lets the tunnel key reclaim its own stale session.
"""

from __future__ import annotations

from collections.abc import Sequence

from deployer.addresses import bracket
from deployer.ssh.forwards import WILDCARD_BINDS, Forward, forwards_key

HOLD_COMMAND = "hold"
RECLAIM_COMMAND = "reclaim"
HOLDING_LINE = "deployer-tunnel: holding"
RECORDED_PREFIX = "deployer-tunnel: recorded"
RECLAIMED_PREFIX = "deployer-tunnel: reclaimed"
NOTHING_LINE = "deployer-tunnel: nothing to reclaim"


def reclaim_forced_command(forwards: Sequence[Forward]) -> str:
    """The POSIX sh forced command that lets the tunnel key reclaim its own stale session.

    ``hold`` (the keeper's session): once the keeper says "up", record "pid start-time" of this
    session's sshd process (the one holding the listeners) in ~/.deployer-tunnel/<ports> and
    tell the keeper; then wait until the keeper's stdin closes. ``reclaim [PID START]``: kill
    the recorded process if it still is that same process (pid and start time), is not this
    session, and (when given) is the one the keeper names. The client's command only selects
    between the two; nothing else runs.
    """
    record = f"$HOME/.deployer-tunnel/{forwards_key(forwards)}"
    return (
        f'f="{record}"; case "$SSH_ORIGINAL_COMMAND" in '
        f'{HOLD_COMMAND}) mkdir -p "${{f%/*}}" || exit 1; echo {HOLDING_LINE}; '
        'read -r l && [ "$l" = up ] && s="$PPID $(cut -d\' \' -f22 /proc/$PPID/stat)"'
        f' && echo "$s" >"$f.new" && mv -f "$f.new" "$f" && echo "{RECORDED_PREFIX} $s"; '
        "exec cat >/dev/null;; "
        f'{RECLAIM_COMMAND}|"{RECLAIM_COMMAND} "*) read -r p t <"$f" 2>/dev/null; '
        f'w="${{SSH_ORIGINAL_COMMAND#{RECLAIM_COMMAND}}}"; '
        'if [ -n "$p" ] && [ "$p" != "$PPID" ] && { [ -z "$w" ] || [ "$w" = " $p $t" ]; }'
        ' && [ "$(cut -d\' \' -f22 /proc/$p/stat 2>/dev/null)" = "$t" ] && kill "$p" 2>/dev/null;'
        f' then echo "{RECLAIMED_PREFIX} $p"; else echo {NOTHING_LINE}; fi;; '
        "*) echo 'deployer-tunnel: only hold and reclaim are allowed' >&2; exit 1;; esac"
    )


def _options(options: Sequence[str]) -> str:
    return ",".join(options)


def _quote_option(value: str) -> str:
    """An authorized_keys option value: double quotes, inner double quotes escaped."""
    return '"' + value.replace('"', '\\"') + '"'


def tunnel_key_options(forwards: Sequence[Forward], *, reclaim: bool) -> str:
    """authorized_keys options for the tunnel key on the jump host."""
    options = ["restrict", "port-forwarding"]
    options += [f'permitlisten="{f.permitlisten()}"' for f in forwards]
    options += [f'permitopen="{p}"' for p in dict.fromkeys(f.permitopen() for f in forwards)]
    command = reclaim_forced_command(forwards) if reclaim else "/bin/false"
    options.append(f"command={_quote_option(command)}")
    return _options(options)


def ci_jump_key_options(forwards: Sequence[Forward]) -> str:
    """authorized_keys options for the CI key on the jump host: reach the tunnel ports, nothing else."""
    opens: list[str] = []
    for forward in forwards:
        hosts = ["localhost", "127.0.0.1"]
        if forward.bind not in (None, "localhost", "127.0.0.1", *WILDCARD_BINDS, "0.0.0.0"):
            hosts = [forward.probe_host]
        opens += [f"{bracket(h)}:{forward.port}" for h in hosts]
    options = ["restrict", "port-forwarding"]
    options += [f'permitopen="{p}"' for p in dict.fromkeys(opens)]
    options.append('command="/bin/false"')
    return _options(options)


def ci_target_key_options(forwards: Sequence[Forward]) -> str:
    """authorized_keys options for the CI key on the target (deploys run commands, no forwarding)."""
    local_only = all(f.host in ("localhost", "127.0.0.1", "::1") for f in forwards)
    return 'restrict,from="127.0.0.1,::1"' if local_only else "restrict"


def render_authorized_keys(
    forwards: Sequence[Forward],
    *,
    tunnel_key: str,
    ci_key: str,
    reclaim: bool,
    client_alive_interval: int = 5,
    client_alive_count: int = 3,
) -> str:
    """The authorized_keys lines per role and the jump host's sshd_config lines, with comments."""
    specs = " ".join(f"-R {f}" for f in forwards)
    ports = ", ".join(f.permitlisten() for f in forwards)
    gateway = [f for f in forwards if f.needs_gateway_ports]
    nominal = client_alive_interval * (client_alive_count + 1)
    lines = [
        f"# deployer authorized-keys for: deployer tunnel JUMP {specs}",
        "",
        "# 1. Jump host, ~/.ssh/authorized_keys of the tunnel's (dedicated) user — the tunnel key.",
        f"#    It may listen on {ports} and connect to those ports to check them; nothing else.",
    ]
    if reclaim:
        lines += [
            "#    With --reclaim its forced command records the session holding the ports and can kill",
            "#    only that session (needs a login shell such as /bin/sh and a writable home).",
        ]
    else:
        lines += ["#    Runs no command (add --reclaim to allow reclaiming a stale session)."]
    lines += [
        f"{tunnel_key_options(forwards, reclaim=reclaim)} {tunnel_key}",
        "",
        "# 2. Jump host, authorized_keys of the user CI logs in as — the CI key (deployer push --jump).",
        "#    It may only reach the tunnel port(s); it runs no command.",
        f"{ci_jump_key_options(forwards)} {ci_key}",
        "",
        "# 3. Target (this intranet server), ~/.ssh/authorized_keys of the deploy user — the CI key.",
    ]
    if ci_target_key_options(forwards).startswith('restrict,from="127.0.0.1'):
        lines += [
            "#    Deploys run commands; connections arrive through the tunnel, from loopback only."
        ]
    else:
        lines += [
            '#    Deploys run commands (add from="<this server\'s address>" to pin the source).'
        ]
    lines += [
        f"{ci_target_key_options(forwards)} {ci_key}",
        "",
        "# 4. Jump host, /etc/ssh/sshd_config (check with `sshd -t`, then reload sshd).",
        f"#    sshd reaps a dead tunnel session after {nominal}-{2 * nominal} s (OpenSSH 9.2 measured:",
        "#    ~2 x interval x (count+1)) and holds its port until then; deployer retries a refused",
        "#    port at least every 4 s, so it is back within that + 5 s. While clients keep",
        "#    connecting to the stale port, sshd does not reap the session at all: use --reclaim.",
        f"ClientAliveInterval {client_alive_interval}",
        f"ClientAliveCountMax {client_alive_count}",
        "AllowTcpForwarding yes",
    ]
    if gateway:
        binds = ", ".join(f.permitlisten() for f in gateway)
        lines += [
            f"#    {binds} should listen beyond loopback: let the client choose the address.",
            "GatewayPorts clientspecified",
        ]
    else:
        lines += [
            "#    GatewayPorts stays at its default (no): tunnel ports listen on loopback only and CI",
            "#    reaches them through sshd (permitopen above).",
        ]
    return "\n".join(lines) + "\n"
