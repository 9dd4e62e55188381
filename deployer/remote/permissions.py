"""Permissions without chmod 777: --group (the release readable by a group) and --writable.

With ``--group GROUP`` every file and directory of a new release gets group GROUP, directories
the setgid bit (what is created in them later gets GROUP too) and the group may read what the
owner may read (and search directories, run what the owner may run), never write: a release is
immutable. ``DIR``, ``DIR/releases`` and ``DIR/shared`` (when the deploy user owns them) become
group-searchable, so the group reaches ``current``; ``--shared`` entries become group-readable.
``--writable PATH`` (a shared entry or a path inside one) is made group-writable instead: the
replacement for chmod 777, so nothing is ever writable by others. Files the deploy user does not
own (uploads the web server wrote) are left as they are: only their owner could change them.

The shell below runs inside the stage script (``$P`` the deploy path, ``$T`` the release being
built) and uses ``chgrp``, symbolic ``chmod`` and ``find -prune -user -group -perm``, which GNU
coreutils/findutils and BusyBox both have (``tools.GROUP_TOOLS``: the probe checks them, and that
the deploy user may give files the group, when --group is asked for).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from deployer.errors import ConfigError
from deployer.remote.layout import validate_shared
from deployer.remote.shell import q
from deployer.remote.status import RemoteStatus

# a group name (POSIX portable characters, as useradd/groupadd accept, a trailing $ for Samba)
# or a numeric gid; anything else could not name a group on the target
GROUP = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\$?$")


@dataclass(frozen=True)
class Permissions:
    """Who besides the deploy user may read the release and write shared paths."""

    group: str = ""  # '' : leave groups and modes as tar and the umask make them
    writable: tuple[str, ...] = ()  # shared paths made group-writable ('dir/' for a directory)


AS_CREATED = Permissions()  # no --group: modes as tar and the umask (less o-w) make them


def validate_permissions(
    group: str | None, writable: Sequence[str], shared: Sequence[str]
) -> Permissions:
    """Check --group and --writable against each other and the --shared entries."""
    group = (group or "").strip()
    if group and not GROUP.match(group):
        raise ConfigError(
            f"--group {group!r} is not a group name or number — give the group of the web"
            " server's user, like www-data"
        )
    if writable and not group:
        raise ConfigError(
            "--writable needs --group GROUP: the group that may write there (deployer never makes"
            " anything writable by everyone)"
        )
    validate_shared(writable)
    for item in writable:
        bare = item.rstrip("/")
        inside = any(
            bare == entry.rstrip("/") or (entry.endswith("/") and bare.startswith(entry))
            for entry in shared
        )
        if not inside:
            raise ConfigError(
                f"--writable {item} is neither a --shared entry nor inside a shared directory"
                f" — writable paths live in DIR/shared: add --shared {item}"
            )
    return Permissions(group, tuple(dict.fromkeys(writable)))


def _writable_seeds(permissions: Permissions) -> list[str]:
    """Create missing writable directories (a writable file must exist: it holds data)."""
    lines = []
    for item in permissions.writable:
        path = f'"$P/shared/"{q(item.rstrip("/"))}'
        if item.endswith("/"):
            lines.append(f"[ -e {path} ] || mkdir -p -- {path}")
        else:
            missing = f"writable file {item} is missing: create it in "
            lines.append(
                f"[ -e {path} ] || {{ echo {q(missing)}\"$P/shared/\"' on the target' >&2;"
                f" exit {int(RemoteStatus.MISSING)}; }}"
            )
    return lines


def _find(starts: str, select: str, action: str) -> str:
    """find STARTS SELECT -exec TOOL -- ARG {} + (action: 'TOOL ARG'; -- before both operands,
    where POSIXLY_CORRECT would not take it after the first)."""
    tool, arg = action.split(" ", 1)
    return f"find {starts} {select} -exec {tool} -- {arg} {{}} +"


def release_lines(permissions: Permissions) -> list[str]:
    """Give the release being built ($T) the group: readable, searchable, setgid, never writable."""
    if not permissions.group:
        return []
    return [
        f"G={q(permissions.group)}",
        "U=$(id -u)",
        # symlinks are skipped (find does not follow them): their own group means nothing
        _find('"$T"', '\\( -type f -o -type d \\) ! -group "$G"', 'chgrp "$G"'),
        _find('"$T"', "-type d \\( ! -perm -2050 -o -perm -020 \\)", "chmod g+rxs,g-w"),
        # group x only where someone has x (chmod's X): scripts stay runnable, data does not
        _find(
            '"$T"',
            "-type f \\( ! -perm -040 -o -perm -020 -o \\( -perm -100 ! -perm -010 \\) \\)",
            "chmod g+rX,g-w",
        ),
    ]


def shared_lines(permissions: Permissions, shared: Sequence[str]) -> list[str]:
    """After the shared entries are linked (and after release_lines, which sets G and U): the way
    to current, the shared entries (group-readable) and the writable paths (group-writable).

    Only what the deploy user owns is changed (chgrp and chmod are the owner's): files others own
    in shared trees are skipped, and find's complaints about directories it cannot read do not
    stop the deploy. A writable path that then is not writable by the group is an error.
    """
    if not permissions.group:
        return []
    owned = '-user "$U"'
    # the group must be able to search its way to current and into the shared entries
    ways = ['"$P"', '"$P/releases"', '"$P/shared"']
    for item in shared:
        parts = item.rstrip("/").split("/")[:-1]
        ways += [f'"$P/shared/"{q("/".join(parts[: n + 1]))}' for n in range(len(parts))]
    ways = list(dict.fromkeys(ways))
    lines = [
        *_writable_seeds(permissions),
        f'set --; for w in {" ".join(ways)}; do [ ! -d "$w" ] || set -- "$@" "$w"; done',
        _find('"$@"', f'-prune -type d {owned} ! -group "$G"', 'chgrp "$G"'),
        _find('"$@"', f"-prune -type d {owned} ! -perm -050", "chmod g+rx"),
    ]
    if shared:
        entries = " ".join(f'"$P/shared/"{q(item.rstrip("/"))}' for item in shared)
        lines += [
            f"{command} 2>/dev/null || :"
            for command in (
                _find(entries, f'\\( -type f -o -type d \\) {owned} ! -group "$G"', 'chgrp "$G"'),
                _find(entries, f"-type d {owned} ! -perm -2050", "chmod g+rxs"),
                _find(
                    entries,
                    f"-type f {owned} \\( ! -perm -040 -o -perm -100 ! -perm -010 \\)",
                    "chmod g+rX",
                ),
            )
        ]
    for item in permissions.writable:
        path = f'"$P/shared/"{q(item.rstrip("/"))}'
        refused = (
            f"shared/{item} is not writable by group {permissions.group} and the deploy user"
            " cannot make it so (another user owns it) — chown it to the deploy user, or make it"
            " group-writable yourself"
        )
        lines += [
            f"{command} 2>/dev/null || :"
            for command in (
                _find(
                    path, f"-type d {owned} \\( ! -perm -2070 -o -perm -002 \\)", "chmod g+rwxs,o-w"
                ),
                _find(
                    path, f"-type f {owned} \\( ! -perm -060 -o -perm -002 \\)", "chmod g+rw,o-w"
                ),
            )
        ]
        lines.append(
            f'[ -n "$(find {path} -prune -group "$G" -perm -020 ! -perm -002)" ] ||'
            f" {{ echo {q(refused)} >&2; exit 1; }}"
        )
    return lines


def describe(permissions: Permissions) -> list[str]:
    """What --group and --writable will do, for the dry run."""
    if not permissions.group:
        return []
    said = [
        f"would give the release group {permissions.group} (readable by it, directories setgid,"
        " writable by no one but the owner)"
    ]
    said += [
        f"would make shared/{item} writable by group {permissions.group}"
        for item in permissions.writable
    ]
    return said
