"""The only target of a push, without hooks: one command builds, switches, records and unlocks.

``AtOnceDeploy`` is a ``TargetDeploy`` whose build command (``remote.stage``'s `then`) also runs
the switch and the finish once the release is published: two remote commands in all, the probe
and that one. A lost reply, or an interrupt while it runs, is settled by asking the target how
far the command got (``remote.switch.landing_script``) and going on from there.
"""

from __future__ import annotations

import contextlib

from deployer.deploy.outcome import Provenance, Status
from deployer.deploy.payload import Payload
from deployer.deploy.recovery import SCRIPT_TIMEOUT
from deployer.deploy.settings import PushSettings
from deployer.deploy.target import TargetDeploy
from deployer.deploy.upload import Reconnect, Upload
from deployer.errors import ConnectError, DeployerError, LockError, RemoteError
from deployer.output import Reporter
from deployer.remote.executor import Executor
from deployer.remote.state import lock_error
from deployer.remote.switch import landing_script


class Landed(Exception):
    """A build-and-switch command whose reply was lost got this far (raised out of the upload)."""

    def __init__(self, executor: Executor, *, switched: bool, finished: bool) -> None:
        super().__init__("the release was published before the reply was lost")
        self.executor = executor  # the connection that found out
        self.switched = switched
        self.finished = finished


class AtOnceDeploy(TargetDeploy):
    """A target's push whose build command switches and finishes too (see the module)."""

    def _build(self) -> None:
        """Upload, switch, record, prune and unlock in one command (the only target, no hooks).

        The switch runs on the target once the release is built and verified. Until the whole
        stream was sent it cannot have run: a failure then is one of the upload's. After that, a
        lost reply is settled by asking the target where the command got to (``_landing``).
        """
        self.outcome.advance(Status.SWITCHING)  # the command sent next may switch current
        self._step = "the switch"
        upload: Upload | None = None
        try:
            upload = self._upload(self._landing, then=self._switch_and_finish_script())
            try:
                report = upload.run(self.settings.shared, self.settings.permissions)
                self._use(upload.executor)
                landed: Landed | None = None
            except Landed as where:
                self._use(where.executor)
                report, landed = upload.report, where
            self._record_transfer(report)
            if landed is not None:
                self._settle(landed)
            else:
                assert upload.switched is not None, "a built release comes with the switch's result"
                self._switched_and_finished(upload.switched)
        except BaseException as exc:
            # a reply without the switch (RemoteError), a lock someone else holds with current
            # elsewhere (LockError), or a stream cut short: the switch never ran
            if upload is None or not upload.sent_whole or isinstance(exc, (RemoteError, LockError)):
                if isinstance(exc, KeyboardInterrupt):
                    self._undo_quietly(lambda: self.abort("interrupted"))
                elif self.outcome.status.live:
                    with contextlib.suppress(DeployerError):  # the first failure is the news
                        self.abort(str(exc) or type(exc).__name__)
                raise
            if isinstance(exc, KeyboardInterrupt) and self._finished_before_interrupt():
                raise
            self._after_switch_failed(exc)
            raise

    def _finished_before_interrupt(self) -> bool:
        """Interrupted while the one command ran: whether the target had recorded the deploy
        already (then nothing is undone, and the log says what is live)."""
        try:
            self._landing(self.executor)
        except Landed as where:
            if where.finished:
                self._lock = None
                self.outcome.advance(Status.DEPLOYED)
                self._say(
                    f"interrupted after the deploy finished: releases/"
                    f"{self.staging.layout.release_id} is live and recorded"
                )
                return True
        except (DeployerError, KeyboardInterrupt):  # cannot tell: switch back as usual
            pass
        return False

    def _landing(self, executor: Executor) -> None:
        """After a reconnect during `_build_and_switch`: resume the upload (return), or raise
        Landed when the command published or switched the release before its reply was lost."""
        assert self._lock is not None
        path, release = self.staging.path, self.staging.layout.release_id
        result = executor.run(
            landing_script(path, self._lock.token, release), timeout=SCRIPT_TIMEOUT
        )
        facts = dict(
            line.partition("=")[::2] for line in result.stdout.decode(errors="replace").splitlines()
        )
        if result.status != 0 or "lock" not in facts:  # as unknown as the lost reply itself
            raise ConnectError(
                f"could not see where the deploy stands on {self.label}: {result.detail}"
            )
        ours = facts["lock"] == "ours"
        if facts.get("current") == release:
            raise Landed(executor, switched=True, finished=not ours)
        if not ours:
            raise lock_error(facts["lock"], path, self.label)
        if facts.get("published") == "yes":
            raise Landed(executor, switched=False, finished=False)

    def _settle(self, landed: Landed) -> None:
        """Carry on from where a build-and-switch command whose reply was lost got to."""
        release = self.staging.layout.release_id
        if landed.finished:  # only the finish, which runs after the switch, removes our lock
            self._lock = None
            self._say(f"switched current -> releases/{release} (the reply was lost; recorded)")
            self.outcome.advance(Status.DEPLOYED)
        elif landed.switched:
            self._say(f"switched current -> releases/{release} (the reply was lost)")
            self._finished(self.executor.run(self._finish_script(), timeout=SCRIPT_TIMEOUT))
            self.outcome.advance(Status.DEPLOYED)
        else:
            self._switch_and_finish()


def target_deploy(
    executor: Executor,
    payload: Payload,
    settings: PushSettings,
    provenance: Provenance,
    reporter: Reporter,
    *,
    reconnect: Reconnect | None = None,
    route: str = "",
    sole: bool = False,
) -> TargetDeploy:
    """One target's push: built and switched in one command when it is the push's only target
    (`sole`) and has no hooks, else in phases (a fleet switches all-or-nothing)."""
    hooks = settings.hooks
    at_once = sole and not (hooks.before or hooks.after or hooks.healthcheck)
    kind = AtOnceDeploy if at_once else TargetDeploy
    return kind(executor, payload, settings, provenance, reporter, reconnect=reconnect, route=route)
