"""Hooks: commands run on the target around the switch, with live output and a time limit.

``before`` runs in the new release before the switch (failure aborts, nothing live changed);
``after`` runs after the switch and ``healthcheck`` after that (failure of either switches back).
Every hook gets the ``--env`` variables, sent on the script's stdin (never on a command line).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from deployer.environment import check_variable_name
from deployer.errors import CommandTimeout, ConfigError, HealthcheckError, HookError
from deployer.output import Reporter
from deployer.remote.executor import Executor
from deployer.remote.hooks import hook_script, send_variables
from deployer.remote.status import RemoteStatus

BACKSTOP = 15.0  # seconds the client waits past --hook-timeout before it stops a hook itself
OUTPUT_LINES = 30  # the failing healthcheck's last lines, shown before the switch back
OUTPUT_LINE_CHARS = 500  # ... each cut to this length


@dataclass(frozen=True)
class HookSettings:
    """The hooks of a deploy, their limits, and the variables (--env) they get."""

    before: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    healthcheck: str | None = None
    timeout: float = 300.0
    healthcheck_retries: int = 2
    healthcheck_interval: float = 3.0
    healthcheck_delay: float = 0.0
    env: Mapping[str, str] = field(default_factory=dict, repr=False)  # secrets: never printed

    def __post_init__(self) -> None:
        # NaN passes every comparison and infinity no limit at all: both are refused by name
        if not math.isfinite(self.timeout) or self.timeout <= 0:
            raise ConfigError("--hook-timeout must be a positive number of seconds")
        if self.healthcheck_retries < 0:
            raise ConfigError("--healthcheck-retries must be 0 or more")
        if not math.isfinite(self.healthcheck_interval) or self.healthcheck_interval < 0:
            raise ConfigError("--healthcheck-interval must be 0 or more seconds")
        if not math.isfinite(self.healthcheck_delay) or self.healthcheck_delay < 0:
            raise ConfigError("--healthcheck-delay must be 0 or more seconds")
        for command in (*self.before, *self.after, self.healthcheck or "x"):
            if not command.strip():
                raise ConfigError("a hook command is empty — remove it or give the command to run")
        for name in self.env:
            check_variable_name(name)


@dataclass(frozen=True)
class HookResult:
    """How a hook ended and the last lines it printed (stdout and stderr, in order)."""

    status: int
    output: tuple[str, ...] = ()


class HookRunner:
    """Runs hooks on one target and streams their output into the job log."""

    def __init__(
        self, executor: Executor, reporter: Reporter, settings: HookSettings, has_timeout: bool
    ) -> None:
        self.executor = executor
        self.reporter = reporter
        self.settings = settings
        self.has_timeout = has_timeout

    def run(self, kind: str, command: str, cwd: str, env: Mapping[str, str]) -> HookResult:
        """Run one hook; return its result (the caller decides what failure means)."""
        label = self.executor.label
        self.reporter.target(label, f"{kind}: $ {command}")
        pending = {"stdout": b"", "stderr": b""}
        tail: deque[str] = deque(maxlen=OUTPUT_LINES)

        def on_output(stream: str, chunk: bytes) -> None:
            # whole lines only: a value split between two chunks is masked once it is complete
            data = pending[stream] + chunk
            *lines, pending[stream] = data.split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace").rstrip()
                tail.append(line[:OUTPUT_LINE_CHARS])
                self.reporter.target(label, f"{kind}| {line}")

        variables = self.settings.env
        script = hook_script(
            command, cwd, env, self.settings.timeout, self.has_timeout, bool(variables)
        )
        try:
            # the client-side limit is a backstop for targets without a timeout command; the
            # executor stops the hook's process group there, and it failed like a timed-out hook
            status = self.executor.run(
                script,
                upload=send_variables(variables),
                on_output=on_output,
                timeout=self.settings.timeout + BACKSTOP,
            ).status
        except CommandTimeout:
            status = RemoteStatus.TIMED_OUT
        for stream, rest in pending.items():
            if rest:
                on_output(stream, b"\n")
        return HookResult(status, tuple(tail))

    def require(self, kind: str, command: str, cwd: str, env: Mapping[str, str]) -> None:
        """Run a hook and raise HookError if it fails."""
        result = self.run(kind, command, cwd, env)
        if result.status != 0:
            raise HookError(
                failure_message(
                    kind, command, result.status, self.executor.label, self.settings.timeout
                )
            )


def failure_message(kind: str, command: str, status: int, label: str, timeout: float) -> str:
    """One line saying which hook failed how."""
    if status == RemoteStatus.TIMED_OUT:
        how = f"did not finish within {timeout:g} s (raise --hook-timeout if it needs longer)"
    elif status == RemoteStatus.NO_RELEASE_DIR:
        how = "could not enter the release directory"
    elif status < 0:
        how = "was killed by a signal"
    else:
        how = f"exited with status {status}"
    what = "healthcheck" if kind == "healthcheck" else f"{kind} hook"
    return f"{what} `{command}` on {label} {how}"


def run_healthcheck(runner: HookRunner, hooks: HookSettings, cwd: str, env: dict[str, str]) -> None:
    """Wait --healthcheck-delay, then try the healthcheck until it passes or the retries are spent.

    When every attempt failed, the last attempt's output is printed (before the caller switches
    back) and carried by the HealthcheckError raised. A lost connection is not a failed check:
    its ConnectError passes through, unretried.
    """
    if not hooks.healthcheck:
        return
    label = runner.executor.label
    if hooks.healthcheck_delay:
        runner.reporter.target(
            label,
            f"healthcheck: waiting {hooks.healthcheck_delay:g} s before the first attempt"
            " (--healthcheck-delay)",
        )
        time.sleep(hooks.healthcheck_delay)
    attempts = hooks.healthcheck_retries + 1
    for attempt in range(1, attempts + 1):
        result = runner.run("healthcheck", hooks.healthcheck, cwd, env)
        if result.status == 0:
            return
        if attempt < attempts:
            runner.reporter.target(
                label,
                f"healthcheck failed (attempt {attempt}/{attempts}), retrying in {hooks.healthcheck_interval:g} s",
            )
            time.sleep(hooks.healthcheck_interval)
    if result.output:
        runner.reporter.target(
            label,
            f"healthcheck failed {attempts} time(s); what its last attempt printed (stdout and"
            f" stderr, at most the last {OUTPUT_LINES} lines):",
        )
        for line in result.output:
            runner.reporter.target(label, f"| {line}")
    else:
        runner.reporter.target(
            label, f"healthcheck failed {attempts} time(s); its last attempt printed nothing"
        )
    raise HealthcheckError(
        failure_message("healthcheck", hooks.healthcheck, result.status, label, hooks.timeout)
        + f" after {attempts} attempt(s)",
        result.output,
        attempts,
    )


def healthcheck_details(hooks: HookSettings, error: HealthcheckError) -> dict[str, object]:
    """A failed healthcheck for --json and the job summary: the command, attempts and output."""
    return {
        "command": hooks.healthcheck,
        "attempts": error.attempts,
        "delay": hooks.healthcheck_delay,
        "output": list(error.output),
    }
