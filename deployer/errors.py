"""One error hierarchy and the documented exit codes.

Every failure the user can cause or meet is a ``DeployerError`` subclass carrying a one-line,
user-facing message (what failed, where, and what to do) and a class-level exit code. Library
exceptions (paramiko, socket, OSError) are translated into these at one boundary each; only the
click entry point prints them and exits.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit statuses, documented in the README."""

    OK = 0
    ERROR = 1  # unexpected internal error (a bug: please report it with --traceback)
    USAGE = 2  # bad flag, option value or configuration file (click uses 2 as well)
    ARTIFACT = 3  # artifact missing, unreadable or unsafe (../, escaping links, .deployignore)
    KEY = 4  # private key unusable: encrypted without passphrase, public key, garbage
    HOST_KEY = 5  # unknown, changed or revoked host key on some hop
    AUTH = 6  # the server refused authentication (wrong user or key not authorized)
    CONNECT = 7  # route failure: unreachable host, timeout, tunnel port not listening
    REMOTE = 8  # target not ready or a remote step failed: path, tools, disk full, not in --group
    HOOK = 9  # a before/after hook or healthcheck failed; live release untouched or restored
    LOCK = 10  # another deploy holds the lock on the target path
    TRANSFER = 11  # the upload was interrupted or arrived incomplete
    WEBHOOK = 12  # the webhook receiver refused the request or its status could not be followed
    GITLAB = 13  # the GitLab API refused a request (token, permission, project) or was unreachable
    UNCONFIRMED = 14  # switched, then the target stayed unreachable: the new release is live but
    # unconfirmed, the lock stays, and the last line names the `deployer rollback` command
    INTERRUPTED = 130  # Ctrl-C / SIGINT


class DeployerError(Exception):
    """Root of every error deployer reports to the user."""

    exit_code: ExitCode = ExitCode.ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(DeployerError):
    """A flag, environment variable or configuration file value is invalid."""

    exit_code = ExitCode.USAGE


class ArtifactError(DeployerError):
    """The artifact is missing, unreadable, of an unknown kind or unsafe to extract."""

    exit_code = ExitCode.ARTIFACT


class PrivateKeyError(DeployerError):
    """The private key cannot be used."""

    exit_code = ExitCode.KEY


class HostKeyError(DeployerError):
    """A hop presented a host key that is unknown, changed or revoked."""

    exit_code = ExitCode.HOST_KEY


class AuthError(DeployerError):
    """A hop refused authentication."""

    exit_code = ExitCode.AUTH


class ConnectError(DeployerError):
    """A hop could not be reached (DNS, refused, timeout, forward refused by the jump host)."""

    exit_code = ExitCode.CONNECT


class RemoteError(DeployerError):
    """The target is not ready for a deploy, or a remote step other than a hook failed."""

    exit_code = ExitCode.REMOTE


class NoShellError(RemoteError):
    """The target ran no command: an account that allows SFTP only (ForceCommand internal-sftp)."""


class HookError(DeployerError):
    """A hook or the healthcheck failed; the live release was left alone or switched back."""

    exit_code = ExitCode.HOOK


class HealthcheckError(HookError):
    """The healthcheck failed every attempt; `output` holds what its last attempt printed."""

    def __init__(self, message: str, output: tuple[str, ...] = (), attempts: int = 0) -> None:
        super().__init__(message)
        self.output = output
        self.attempts = attempts


class LockError(DeployerError):
    """Another deploy holds the lock on the target path."""

    exit_code = ExitCode.LOCK


class TransferError(DeployerError):
    """The upload stopped before the whole artifact arrived."""

    exit_code = ExitCode.TRANSFER


class CommandTimeout(TransferError):
    """A remote command ran past the client's own limit (it was stopped; the connection may be fine)."""


class UnconfirmedError(DeployerError):
    """Switched, then neither confirmed nor switched back: the new release is live, the lock stays."""

    exit_code = ExitCode.UNCONFIRMED


class ProxyError(ConnectError):
    """The proxy or ProxyCommand in front of the first hop failed (a route failure: exit 7)."""


class WebhookError(DeployerError):
    """The webhook receiver refused a deploy request, or its status could not be followed."""

    exit_code = ExitCode.WEBHOOK


class InternalError(DeployerError):
    """A bug met while working on one target of several (the others are still undone properly)."""

    exit_code = ExitCode.ERROR


class GitLabError(DeployerError):
    """The GitLab API refused a request (token, role, project) or could not be reached."""

    exit_code = ExitCode.GITLAB


class TargetsFailed(DeployerError):
    """Some of several targets failed (the others' results stand); the first failure's exit code."""

    def __init__(self, message: str, first: DeployerError) -> None:
        super().__init__(message)
        self.exit_code = first.exit_code


def reason(exc: BaseException) -> str:
    """A library exception's text for a one-line message (whitespace collapsed, no final period)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text.rstrip(".")
