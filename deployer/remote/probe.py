"""The probe: one read-only round trip that reports path, space, tools, releases and the lock (and can take it)."""

from __future__ import annotations

from deployer.errors import NoShellError, RemoteError
from deployer.remote.executor import Executor, RunResult
from deployer.remote.shell import q
from deployer.remote.state import TargetState, parse_state
from deployer.remote.tools import save_tools_script, tools_script

HISTORY_LINES = 1000  # the newest history lines the probe reads for failed releases

# `h=<action> <release>` for history lines of one action (keys are sorted: action comes first)
_LAST_ACTION_SED = r's/^{"action":"\(%s\)".*"release":"\([0-9TZ-]*\)".*$/h=\1 \2/p'


def preflight_script(path: str, lock_info: str | None = None, group: str = "") -> str:
    """Probe the target: path, permissions, free space, tools, releases, lock (read-only), and with
    lock_info also create the layout and take the lock when the path is usable (saves a round trip).
    With group (--group), also whether the login may give files that group."""
    asked = f'out group {q(group)}\nout groups "$(id -Gn 2>/dev/null)"\n' if group else ""
    return f"""P={q(path)}
out() {{ printf '%s=%s\\n' "$1" "$2"; }}
d="$P"
while [ ! -e "$d" ] && [ "$d" != / ] && [ "$d" != . ]; do d=$(dirname -- "$d"); done
if [ -e "$P" ]; then out exists yes; else out exists no; fi
if [ -e "$P" ] && [ ! -d "$P" ]; then out is_dir no; fi
w=yes
for c in "$d" "$P/releases" "$P/.deployer"; do
  if [ -e "$c" ] && [ ! -w "$c" ]; then w=no; out writable_dir "$c"; break; fi
done
out writable "$w"
# what of P does not exist yet, with its slash (dirname turns a relative first name into ".")
if [ "$P" = "$d" ]; then rest=; elif [ "$d" = . ]; then rest="/${{P#./}}"; else rest="${{P#"$d"}}"; fi
out abspath "$(cd -- "$d" 2>/dev/null && pwd -P)$rest"
out free_kb "$(df -Pk -- "$d" 2>/dev/null | awk 'NR==2 {{print $4}}')"
{asked}{tools_script(group)}
ck=none
if [ -L "$P/current" ]; then
  c=$(readlink -- "$P/current")
  case $c in
    releases/*[!0-9TZ-]*|releases/) ck=bad ;;
    releases/?*) ck=ok; out current "$c" ;;
    *) ck=bad ;;
  esac
  # a link made by someone else is reported, never passed on: only its harmless characters
  [ "$ck" = ok ] || out current_bad "$(printf '%s' "$c" | tr -c 'A-Za-z0-9._/+@:=, -' '?')"
elif [ -e "$P/current" ]; then ck=other; out current_kind other; fi
if [ -d "$P/releases" ]; then
  for r in "$P"/releases/*; do
    case ${{r##*/}} in *[!0-9TZ-]*) continue ;; esac
    [ -d "$r" ] && out release "${{r##*/}}"
  done
fi
if [ -d "$P/.deployer/lock" ]; then out lock "$(head -n 1 -- "$P/.deployer/lock/info" 2>/dev/null)"; fi
if [ "$ck" = ok ] && [ -f "$P/.deployer/manifests/${{c#releases/}}.tsv" ]; then
  sed 's/^/m=/' -- "$P/.deployer/manifests/${{c#releases/}}.tsv"
fi
# releases that failed (or were rolled back to since): they never count toward --keep
[ -f "$P/.deployer/history" ] && tail -n {HISTORY_LINES} -- "$P/.deployer/history" |
  sed -n -e {q(_LAST_ACTION_SED % "failed")} -e {q(_LAST_ACTION_SED % "rollback")}
out login "$(id -un)"
{"exit 0" if lock_info is None else _lock_attempt(lock_info)}
"""


def _lock_attempt(lock_info: str) -> str:
    """Shell text run after the probe: lock only a writable directory whose current is usable,
    on a target that has every tool the scripts need."""
    return f"""if [ "$w" = yes ] && [ "$tools" = yes ] && {{ [ ! -e "$P" ] || [ -d "$P" ]; }} &&
  [ "$ck" != bad ] && [ "$ck" != other ]; then
  umask o-w  # whatever the login's umask, nothing deployer creates is writable by everyone
  mkdir -p -- "$P/releases" "$P/shared" "$P/.deployer/manifests" 2>/dev/null
  if mkdir -- "$P/.deployer/lock" 2>/dev/null; then
    printf '%s\\n' {q(lock_info)} > "$P/.deployer/lock/info"
    rm -rf -- "$P"/releases/.*.partial
{save_tools_script()}
    out locked yes
  else
    out lock "$(head -n 1 -- "$P/.deployer/lock/info" 2>/dev/null)"
  fi
fi
exit 0"""


def run_checked(executor: Executor, script: str, what: str, **kwargs: object) -> RunResult:
    result = executor.run(script, **kwargs)  # type: ignore[arg-type]
    if result.status != 0:
        raise RemoteError(f"{what} on {executor.label} failed: {result.detail}")
    return result


def probe(
    executor: Executor, path: str, lock_info: str | None = None, group: str = ""
) -> TargetState:
    """Run the preflight (read-only unless lock_info asks it to take the lock) and parse it."""
    text = run_answered(executor, preflight_script(path, lock_info, group), "inspecting the target")
    return parse_state(path, text)


def run_answered(executor: Executor, script: str, what: str) -> str:
    """Run a script whose output starts with an `exists=` line; return its output.

    Raises NoShellError when the target did not run it at all (an SFTP-only account: OpenSSH
    answers every command of a ``ForceCommand internal-sftp`` account with one line and exit 1).
    stdin is closed at once, so that a forced command reading it (an sftp-server) ends too.
    """
    result = executor.run(script, upload=_no_input)
    text = result.stdout.decode(errors="replace")
    if "\nexists=" not in "\n" + text:  # (a login banner may come before it)
        said = (text.strip() or result.stderr_line).splitlines()
        answer = said[0].strip() if said else f"exit status {result.status}"
        raise NoShellError(
            f"{executor.label} runs no commands (it answered: {answer})"
            " — an SFTP-only account: deploy with --transport sftp (or auto, the default)"
        )
    if result.status != 0:
        raise RemoteError(f"{what} on {executor.label} failed: {result.detail}")
    return text


def _no_input(stdin: object) -> None:
    """Send nothing: the preflight reads no stdin."""
