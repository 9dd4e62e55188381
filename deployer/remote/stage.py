"""Building a release on the target in one command: unpack, reuse unchanged files, verify, publish."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from deployer.remote.layout import Layout, manifest_path, snapshot_path
from deployer.remote.permissions import AS_CREATED, Permissions, release_lines, shared_lines
from deployer.remote.shell import q
from deployer.remote.status import RemoteStatus
from deployer.remote.tools import Toolset

# How the tar stream arrives (artifact.compression.Codec: remote may not import artifact)
Codec = Literal["zstd", "gzip", "none"]


def stage_script(
    layout: Layout,
    shared: Sequence[str],
    *,
    sections: tuple[int, int],
    previous_id: str,
    hardlink: bool,
    codec: Codec,
    tools: Toolset,
    permissions: Permissions = AS_CREATED,
    then: str = "",
) -> str:
    """Build the release in one command: manifest, reuse list and tar stream arrive on stdin.

    stdin holds two gzip sections of exactly `sections` bytes (the manifest, and sha256sum lines
    of the files to copy from the previous release), then the tar stream up to EOF. The tree is
    verified against the manifest before it is published (hashed by OpenSSL where the target has
    it, else by sha256sum): every file sent is hashed, and so is every copied file unless its
    source still has the inode, size and times recorded in the previous release's stat snapshot
    (`snapshot_path`). Files that fail are printed on stdout (one path a line) and the command
    exits RemoteStatus.VERIFY_FAILED, leaving the partial dir so that a second call can send just
    those files. On success it prints ``trusted=N``: the copies that the snapshot vouched for.
    `tools` (what the probe found) says whether copies may use reflinks and run several at a
    time; everything else is what GNU coreutils and BusyBox both have. The tar stream is
    `codec`-encoded: zstd goes through the target's `zstd -dc` (BusyBox's and older GNU tars
    cannot call it themselves), gzip through tar's own -z.
    `permissions` (--group, --writable) are applied to the verified tree and the shared entries.
    `then` (shell text: the switch, for a push that can switch at once) runs once the release is
    published, after a PUBLISHED line on stdout; the command's status is then that of `then`.
    """
    manifest_bytes, reuse_bytes = sections
    how = "-l" if hardlink else "-p --reflink=auto" if tools.reflink else "-p"
    jobs = f"-P {COPY_JOBS} " if tools.parallel else ""
    work = f"{layout.path}/.deployer/stage.{layout.release_id}"
    lines = [
        "set -e",
        "umask o-w",  # whatever the login's umask, nothing deployer creates is writable by everyone
        "export TZ=UTC0",  # stat's times compare as text
        f"P={q(layout.path)}",
        f"T={q(layout.partial_dir)}",
        f"M={q(manifest_path(layout.path, layout.release_id))}",
        f"S={q(snapshot_path(layout.path, layout.release_id))}",
        f"W={q(work)}",
        'mkdir -p -- "$P/.deployer/manifests" "$T"',
        # dd with fullblock reads exactly the section; what follows stays on stdin for tar
        f'dd bs={manifest_bytes} count=1 iflag=fullblock 2>/dev/null | gzip -dc > "$M.tmp"',
        f'dd bs={reuse_bytes} count=1 iflag=fullblock 2>/dev/null | gzip -dc > "$W.reuse"',
        *_unpack(codec),
        ': > "$W.trusted"',
    ]
    if previous_id:
        before = q(f"{layout.path}/releases/{previous_id}")
        snapshot = q(snapshot_path(layout.path, previous_id))
        copy = f'cp {how} --parents -t "$T" --'
        nul = "tr '\\n' '\\000'"
        # copies run COPY_JOBS at a time (creating files is latency-bound on a busy disk); the first
        # file of each directory goes first, alone, so that parallel cp's never race to mkdir it
        lines += [
            ': >"$W.first"; : >"$W.rest"',
            f'cut -c67- "$W.reuse" | awk -v first="$W.first" -v rest="$W.rest" {q(_FIRST_OF_DIR_AWK)}',
        ]
        # the stat is read after the copy: a change during the copy shows, one after it is not in it
        lines.append(
            f'if [ -s "$W.reuse" ] && (cd -- {before} && {nul} <"$W.first" | xargs -0 -r {copy} &&'
            f' {nul} <"$W.rest" | xargs -0 -r {jobs}-n {COPY_BATCH} {copy})'
            f" 2>/dev/null && [ -s {snapshot} ]; then"
            f' (cd -- {before} && cat -- "$W.first" "$W.rest" | {nul} | xargs -0 -r stat -c {q(STAT_FORMAT)} --)'
            ' >"$W.now" 2>/dev/null &&'
            f" awk -v link={int(hardlink)} {q(_TRUSTED_AWK)}"
            f' {snapshot} "$W.now" >"$W.trusted" ||'
            ' : > "$W.trusted"; fi'
        )
    lines += [
        # the stat snapshot (below) needs one tick of the kernel's clock between the last write
        # to the tree and its marker: it passes while the tree is verified
        f"{{ {_ONE_TICK}; }} </dev/null >/dev/null 2>&1 & tick=$!",
        'cd -- "$T"',
        # hash the files that need it on every CPU (up to 8): split into lists of about equal bytes
        "n=$(nproc 2>/dev/null) || n=1",
        '[ "$n" -le 8 ] 2>/dev/null || n=8',
        f'awk -F \'\\t\' -v n="$n" -v out="$W.verify." {q(_VERIFY_SPLIT_AWK)} "$W.trusted" "$M.tmp"',
        "pids=",
        'for f in "$W".verify.*; do',
        '  [ -f "$f" ] || continue',
        f'  {_check_list(tools)} & pids="$pids $!"',
        "done",
        "ok=1",
        'for p in $pids; do wait "$p" || ok=0; done',
        # what GNU's --strict does, on any sha256sum: every line was read and its file checked
        f'[ -z "$pids" ] || awk {q(_EVERY_LINE_OK_AWK)} "$W".verify.[0-9] "$W".verify.[0-9].check ||'
        " ok=0",
        'if [ "$ok" = 0 ]; then',
        "  cat -- \"$W\".verify.*.check | sed -n 's/: FAILED.*$//p'",
        "  cat -- \"$W\".verify.*.check | grep -q ': FAILED' ||",
        '    echo "sha256sum -c could not check the files: $(cat -- "$W".verify.*.err | head -n 1)" >&2',
        '  rm -f -- "$W".*',
        f"  exit {int(RemoteStatus.VERIFY_FAILED)}",
        "fi",
    ]
    lines += release_lines(permissions)
    for item in shared:
        lines.append(_link_shared(item))
    lines += shared_lines(permissions, shared)
    # the stat snapshot lets the next deploy trust unchanged files without hashing them. File
    # times have the kernel's tick (up to 10 ms): every file written above must be older than
    # the marker, so that only later writers can make entries racy
    lines.append('wait "$tick"')
    if permissions.group:  # chgrp and chmod above changed the files' ctimes after the tick
        lines.append(_ONE_TICK)
    lines += [
        ': > "$W.mark"',
        '{ printf \'#%s\\n\' "$(stat -c %z -- "$W.mark")" &&'
        f' find . -type f -exec stat -c {q(STAT_FORMAT)} -- {{}} +; }} >"$S.tmp" 2>/dev/null ||'
        ' rm -f -- "$S.tmp"',
        'printf \'trusted=%s\\n\' "$(wc -l < "$W.trusted")"',
        'rm -f -- "$W".*',
        f'mv -T -- "$T" {q(layout.release_dir)}',  # never into a release that is there already
        'mv -- "$M.tmp" "$M"',
        '[ ! -f "$S.tmp" ] || mv -- "$S.tmp" "$S"',
    ]
    if then:
        lines += [f"printf '%s\\n' {q(PUBLISHED.decode())}", "set +e", then.rstrip("\n")]
    return "\n".join(lines) + "\n"


_ONE_TICK = "sleep 0.02 2>/dev/null || sleep 1"  # BusyBox may be built without fractional sleep

# The line a stage command prints once its release is published (a path never holds a tab)
PUBLISHED = b"deployer\tpublished"


STAT_FORMAT = "%i|%s|%y|%z|%n"


def _unpack(codec: Codec) -> list[str]:
    """Unpack the rest of stdin into $T (as root too, files belong to the deploying user)."""
    if codec != "zstd":
        return [f'tar --no-same-owner -x{"z" if codec == "gzip" else ""}f - -C "$T"']
    # sh has no pipefail: zstd's status comes back through a file. A stream cut between frames
    # would otherwise leave tar a shorter archive; tar fails on its own on a cut inside a member
    return [
        '{ zstd -dcq; echo "$?" >"$W.unzstd"; } | tar --no-same-owner -xf - -C "$T"',
        '[ "$(cat -- "$W.unzstd")" = 0 ] ||'
        ' { echo "zstd -dc could not decode the upload stream" >&2; rm -f -- "$W".*; exit 1; }',
    ]


# Prints the reused files (read from stat lines of the previous release, taken after the copy)
# whose inode, size, mtime and ctime are those of the snapshot taken when that release was
# published, so their copies need no hashing. Any write sets ctime, and no one can set it back.
# Hard links (link=1) change the ctime of the shared inode, and so do other releases' links and
# prunes: there, ctime is not compared, and mtime (which writes set too) must do. Entries whose
# compared time is not older than the snapshot's marker are left out (racy: a write in the same
# clock tick would not show, as in git's index).
_TRUSTED_AWK = r"""
BEGIN { FS = "|" }
function name(  n) { n = substr($0, length($1 FS $2 FS $3 FS $4) + 2); sub(/^\.\//, "", n); return n }
function key() { return link ? $1 FS $2 FS $3 : $1 FS $2 FS $3 FS $4 }
FILENAME == ARGV[1] && FNR == 1 { mark = substr($0, 2); next }
NF < 5 || $1 !~ /^[0-9]+$/ { next }
FILENAME == ARGV[1] { if ((link ? $3 : $4) < mark) snap[name()] = key(); next }
(name() in snap) && snap[name()] == key() { print name() }
"""


# Exits 0 when the sha256sum -c output (the .check files) has one OK for every line of the lists.
_EVERY_LINE_OK_AWK = r"""
FILENAME ~ /[.]check$/ { if (/: OK$/) ok++; next }
{ lines++ }
END { exit ok != lines }
"""


def _check_list(tools: Toolset) -> str:
    """Shell text checking the list "$f" (sha256sum -c lines) into "$f.check" (`name: OK` lines).

    With OpenSSL on the target, its sha256 hashes the files (several times faster than
    sha256sum where the CPU has SHA instructions); its output must then name every file of the
    list, in order, with the expected digest. Anything else (a missing or changed file, a name
    printed differently) falls back to sha256sum -c, whose output names the files that failed.
    """
    check = 'sha256sum -c "$f" >"$f.check" 2>"$f.err"'
    if not tools.openssl:
        return check
    fast = (
        "cut -c67- \"$f\" | sed 's|^|./|' | tr '\\n' '\\000' |"
        ' xargs -0 -r openssl dgst -sha256 -r >"$f.sums" 2>/dev/null &&'
        f' awk {q(_SAME_DIGESTS_AWK)} "$f" "$f.sums" >"$f.check"'
    )
    return f"{{ {{ {fast}; }} || {check}; }}"


# Prints `name: OK` for every line of the list (ARGV[1]: sha256sum -c lines) when the openssl
# output (ARGV[2]: `digest *./name` lines) has the same digest and name on the same line, and
# exits 1 at the first difference or when the line counts differ.
_SAME_DIGESTS_AWK = r"""
FILENAME == ARGV[1] { want[FNR] = substr($0, 1, 64) " *./" substr($0, 67); name[FNR] = substr($0, 67); n = FNR; next }
$0 != want[FNR] { exit 1 }
{ got = FNR }
END { if (got != n) exit 1; for (i = 1; i <= n; i++) print name[i] ": OK" }
"""


def inventory_script(layout: Layout) -> str:
    """sha256 of every file already in the partial dir (what survived an interrupted upload)."""
    return f"""T={q(layout.partial_dir)}
[ -d "$T" ] || exit 0
cd -- "$T" && find . -type f -exec sha256sum -- {{}} +
"""


# Unchanged files are copied (or linked) this many cp's at a time, each given up to COPY_BATCH
# names. Creating files waits on the filesystem's journal: on a busy disk 4 in parallel copied
# 3000 files in about half the time of one cp (README.md, Performance: Redeploys).
COPY_JOBS = 4


COPY_BATCH = 256


# Splits reuse-list names in two: the first file seen in each directory (copied alone first, so
# that every parent directory exists) and the rest (copied in parallel).
_FIRST_OF_DIR_AWK = r"""
{ d = $0; if (!sub(/\/[^\/]*$/, "", d)) d = "."; if (d in seen) print > rest; else { seen[d]; print > first } }
"""


# Writes sha256sum -c lines of the manifest's files that no stat vouched for (ARGV[1]: trusted
# names) into n lists, each file to the list with the fewest bytes so far (+4 KiB per file for
# the open and the read that even an empty file costs).
_VERIFY_SPLIT_AWK = r"""
FILENAME == ARGV[1] { trusted[$0]; next }
!($4 in trusted) {
    k = 0; for (i = 1; i < n; i++) if (load[i] < load[k]) k = i
    load[k] += $2 + 4096; print $1 "  " $4 > (out k)
}
"""


def _link_shared(item: str) -> str:
    """Replace release/<item> by a relative symlink to shared/<item>, seeding files on first use."""
    is_dir = item.endswith("/")
    rel = item.rstrip("/")
    depth = rel.count("/")
    # the link sits in DIR/releases/<id>/<rel>: climb to DIR, then into shared/
    target = "../" * (depth + 2) + "shared/" + rel
    s, t = f'"$P/shared/"{q(rel)}', f'"$T/"{q(rel)}'
    if is_dir:
        seed = f"[ -e {s} ] || mkdir -p -- {s}"
    else:
        seed = (
            f"if [ ! -e {s} ]; then"
            f' if [ -f {t} ]; then mkdir -p -- "$(dirname -- {s})" && cp -p -- {t} {s};'
            f" else echo {q(f'shared file {rel} is missing: create it in ')}\"$P/shared/\"' on the target' >&2;"
            f" exit {int(RemoteStatus.MISSING)}; fi; fi"
        )
    return f'{seed}\nrm -rf -- {t}\nmkdir -p -- "$(dirname -- {t})"\nln -s -- {q(target)} {t}'


def remove_partial_script(layout: Layout) -> str:
    """Remove an upload that did not complete."""
    return f"rm -rf -- {q(layout.partial_dir)}\n"
