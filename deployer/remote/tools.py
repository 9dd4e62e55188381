"""What the release scripts need from a target's tools, how the probe checks it, and what it chooses.

The scripts run on GNU coreutils/findutils and on BusyBox (as Debian and Alpine build it): they
use options both have. Where one offers more (copy-on-write copies, parallel copies) the probe
finds out, once per deploy, and the stage script uses it. Every requirement is checked by doing
what the scripts do, in a scratch directory, so that a target lacking one is refused in the probe,
before anything is uploaded, with the name of what is missing and the package that provides it.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass

from deployer.errors import RemoteError
from deployer.remote.shell import q


@dataclass(frozen=True)
class Need:
    """One tool (and the options the scripts use), the package that provides it, and its check."""

    name: str  # how messages name it: the tool, and the option deployer relies on
    package: str  # what provides it on Debian and Alpine (BusyBox provides most of them too)
    # a shell test run in the scratch directory that exits 0 when the tool works ('': command -v)
    check: str = ""


_EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
# an empty tar archive (two zero blocks), gzipped: printf makes it with no other tool
_EMPTY_TAR_GZ = "".join(f"\\{byte:03o}" for byte in gzip.compress(bytes(1024), mtime=0))
# the same archive as one zstd frame (made by `zstd -19 --no-check`; a unit test decodes it)
EMPTY_TAR_ZST = bytes.fromhex("28b52ffd006845000008000100fc2b2004")

_COREUTILS = ("cat", "cut", "date", "df", "dirname", "head", "id", "ln", "mkdir", "readlink", "rm",
              "sleep", "tail", "tr", "wc")  # fmt: skip

# Every tool the scripts run (probe, lock, stage, switch, prune, history, hooks). The checks run in
# a scratch directory holding a/b/f (an empty file) and the empty directories c/, d/ and e/; each
# process costs a few milliseconds, so a check does what the scripts do with as few as it can.
REQUIRED: tuple[Need, ...] = (
    *(Need(tool, "coreutils") for tool in _COREUTILS),
    Need("sh", "dash"),
    Need("grep", "grep"),
    Need("sed", "sed"),
    Need("awk", "gawk"),
    Need("gzip -dc", "gzip", f"printf '{_EMPTY_TAR_GZ}' | gzip -dc"),
    Need("tar -xzf - -C", "tar", f"printf '{_EMPTY_TAR_GZ}' | tar -xzf - -C c"),
    Need(
        "dd iflag=fullblock",
        "coreutils",
        '[ "$(printf abc | dd bs=2 count=1 iflag=fullblock)" = ab ]',
    ),
    Need(
        "sha256sum -c",
        "coreutils",
        f"printf '%s  a/b/f\\n' {_EMPTY_SHA256} >l && [ \"$(sha256sum -c l)\" = 'a/b/f: OK' ]",
    ),
    Need(
        "cp --parents -t",
        "coreutils",
        "cp -p --parents -t c -- a/b/f && cp -l --parents -t d -- a/b/f && [ -f c/a/b/f ] && [ -f d/a/b/f ]",
    ),
    Need(
        "stat -c",
        "coreutils",
        # the stage script's STAT_FORMAT: inode, size, mtime, ctime, name
        "case \"$(stat -c '%i|%s|%y|%z|%n' -- a/b/f)\" in [0-9]*'|0|'?*'|'?*'|a/b/f') ;; *) false ;; esac",
    ),
    # the atomic switch: a symlink renamed over a symlink to a directory, not moved into it
    Need("mv -T", "coreutils", "ln -s a x && ln -s c y && mv -fT -- x y && [ -d y/b ]"),
    Need("find -exec {} +", "findutils", '[ "$(find a -type f -exec echo {} +)" = a/b/f ]'),
    Need(
        "xargs -0 -r",
        "findutils",
        "[ \"$(printf 'a b\\000' | xargs -0 -r echo)\" = 'a b' ]",
    ),
)

REFLINK = Need("cp --reflink=auto", "coreutils", "cp -p --reflink=auto -- a/b/f e/f")
PARALLEL = Need(
    "xargs -P", "findutils", "[ \"$(printf 'a\\000' | xargs -0 -r -P 2 -n 1 echo)\" = a ]"
)
TIMEOUT = Need("timeout", "coreutils", "timeout -k 1 5 true")
# sha256 through OpenSSL (CPU instructions where the CPU has them): on this repository's bench
# machine 0.22 s of CPU for 300 MB, against 1.4 s for GNU sha256sum and 1.6 s for BusyBox's
OPENSSL = Need(
    "openssl dgst -sha256 -r",
    "openssl",
    f'[ "$(openssl dgst -sha256 -r a/b/f)" = "{_EMPTY_SHA256} *a/b/f" ]',
)
ZSTD = Need(
    "zstd -dc",
    "zstd",
    "[ \"$(printf '{}' | zstd -dcq | wc -c)\" -eq 1024 ]".format(
        "".join(f"\\{byte:03o}" for byte in EMPTY_TAR_ZST)
    ),
)

# What the scripts use when it is there: copy-on-write copies, copies several at a time, a time
# limit for hooks (without it, deployer's own client-side limit stops them), zstd for the upload
# stream (without it, gzip) and OpenSSL's sha256 to verify the release (without it, sha256sum).
OPTIONAL: tuple[Need, ...] = (REFLINK, PARALLEL, TIMEOUT, ZSTD, OPENSSL)


TOOLS_CACHE = ".deployer/tools"  # under the deploy path: what the last locking probe found

# What --group and --writable add (remote.permissions): checked only when they are asked for.
GROUP_TOOLS: tuple[Need, ...] = (
    Need("chgrp", "coreutils"),
    Need(
        "chmod g+rwXs",
        "coreutils",
        "mkdir g && : >g/h && chmod 700 g && chmod 600 g/h && chmod -- g+rwxs,o-w g &&"
        " chmod -- g+rX,g-w g/h && [ -g g ]",
    ),
    Need(
        "find -prune -user -group -perm",
        "findutils",
        'mkdir k && chmod 750 k && [ "$(find k -prune -type d -user "$(id -u)"'
        ' -group "$(stat -c %g -- k)" -perm -050 ! -perm -002)" = k ]',
    ),
)


def tools_script(group: str = "") -> str:
    """Shell text for the probe: `have=<name>` for every tool that works (or `scratch=no`), and
    tools=yes in the shell when every required one does.

    With `group` (--group), also the tools permissions need and whether the login may give files
    that group (`group_ok=yes`, else `group_error=` what chgrp said): either failing means no lock.
    Runs after the probe has set `P` (the deploy path), `d` (its nearest existing directory) and
    `out`. The checks start a few dozen processes (about 0.1 s on a busy machine); when every
    required tool passed, a locking probe keeps the result in $P/.deployer/tools (see
    `save_tools_script`), keyed on the user and a listing of every tool's binary (path, size,
    time: an install, upgrade or removal changes it), and the next probe reads it from there. With
    `group` the checks always run, and nothing is kept: whether chgrp works depends on the group.
    """
    required = "\n".join(_check_line(need, " || m=1") for need in REQUIRED)
    optional = "\n".join(_check_line(need, "") for need in OPTIONAL)
    programs = " ".join(dict.fromkeys(need.name.split()[0] for need in (*REQUIRED, *OPTIONAL)))
    keying = (
        ""
        if group
        else f"""bins=$(for c in {programs}; do command -v "$c"; done)
key=$( {{ id -u; ls -lLn --full-time -- $bins 2>/dev/null || ls -lLn -- $bins; }} 2>/dev/null |
  sha256sum 2>/dev/null)
"""
    )
    if group:
        optional += "\n" + "\n".join(_check_line(need, " || m=1") for need in GROUP_TOOLS)
        optional += (
            f"\n  if chgrp -- {q(group)} a/b/f 2>ge; then out group_ok yes;"
            ' else out group_error "$(head -n 1 ge)"; m=1; fi'
        )
    return f"""tools=no
fresh=no
key=
{keying}if [ -n "$key" ] && [ -f "$P/{TOOLS_CACHE}" ] && [ "$(head -n 1 -- "$P/{TOOLS_CACHE}")" = "$key" ]; then
  have=$(tail -n +2 -- "$P/{TOOLS_CACHE}") && printf '%s\\n' "$have" && tools=yes
else
t=${{TMPDIR:-/tmp}}/.deployer-probe.$$
if mkdir -m 700 -- "$t" 2>/dev/null || {{ t="$d/.deployer-probe.$$"; mkdir -m 700 -- "$t" 2>/dev/null; }}; then
  have=$(
  cd -- "$t" && mkdir -p a/b c d e && : > a/b/f || exit 1
  m=0
{required}
{optional}
  exit $m
  ) && tools=yes && fresh=yes
  printf '%s\\n' "$have"
  rm -rf -- "$t"
else
  out scratch no
fi
fi
"""


def save_tools_script() -> str:
    """Shell text for a locking probe, after it made $P/.deployer: keep what the checks found."""
    return f"""if [ "$fresh" = yes ] && [ -n "$key" ]; then
  {{ printf '%s\\n' "$key" "$have" > "$P/{TOOLS_CACHE}.tmp" &&
    mv -f -- "$P/{TOOLS_CACHE}.tmp" "$P/{TOOLS_CACHE}"; }} 2>/dev/null
fi"""


def _check_line(need: Need, otherwise: str) -> str:
    test = need.check or f"command -v {need.name}"
    return f"  {{ {test}; }} >/dev/null 2>&1 && out have {q(need.name)}{otherwise}"


@dataclass(frozen=True)
class Toolset:
    """What the probe found a target's tools can do."""

    have: frozenset[str] = frozenset()  # the names of the Needs whose check passed
    checked: bool = True  # False: no scratch directory could be made to run the checks in
    extra: tuple[Need, ...] = ()  # required on top of REQUIRED (GROUP_TOOLS for --group)

    @property
    def missing(self) -> tuple[Need, ...]:
        """The required tools that are absent or lack an option the scripts use."""
        return tuple(need for need in (*REQUIRED, *self.extra) if need.name not in self.have)

    @property
    def reflink(self) -> bool:
        """cp --reflink=auto works (GNU coreutils; BusyBox built with it)."""
        return REFLINK.name in self.have

    @property
    def parallel(self) -> bool:
        """xargs -P works (GNU findutils; BusyBox built with it)."""
        return PARALLEL.name in self.have

    @property
    def zstd(self) -> bool:
        """zstd -dc decodes a stream (the zstd package; BusyBox has no zstd applet)."""
        return ZSTD.name in self.have

    @property
    def openssl(self) -> bool:
        """openssl dgst -sha256 -r hashes files (the openssl package; not in BusyBox)."""
        return OPENSSL.name in self.have

    @property
    def timeout(self) -> bool:
        """timeout -k works (coreutils; BusyBox)."""
        return TIMEOUT.name in self.have


def check_tools(tools: Toolset, label: str, path: str) -> None:
    """Raise the one-line error naming what the target lacks and the package that provides it."""
    if not tools.checked:
        raise RemoteError(
            f"could not create a scratch directory on {label} (in $TMPDIR, /tmp or next to {path})"
            " to check its tools — make /tmp writable or free some space there"
        )
    missing = tools.missing
    if missing:
        names = ", ".join(need.name for need in missing)
        *others, last = dict.fromkeys(need.package for need in missing)
        packages = f"{', '.join(others)} and {last}" if others else last
        raise RemoteError(
            f"{label} lacks {names} — install {packages} there (deployer needs a POSIX shell, tar,"
            " gzip and GNU coreutils/findutils or BusyBox; see README, Targets)"
        )
