#!/usr/bin/env python3
"""SFTP-only targets: deployer's pipelined SFTP push against OpenSSH's own sftp and scp.

Runs the sandbox (jump sshd, target sshd, ``ssh -R`` tunnel) with an account that has
``ForceCommand internal-sftp`` (root only: it is a second user), optionally behind bench/relay.py
for latency, and times, through the same jump host and tunnel:

- ``deployer push`` (which finds the account runs no commands and deploys over SFTP): a full
  deploy, then a redeploy with 1 % of the files changed (unchanged ones copied on the server);
- ``sftp -b`` with ``put -r`` and ``scp -r`` (OpenSSH 9: the SFTP protocol) of the same tree into
  a fresh directory (no release, no switch, no verification: the floor for plain SFTP).

    python bench/sftp.py --rtt-ms 0,20 --files 1000 --big-mb 64 --repeat 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from deployer.sandbox.servers import free_port, wait_for_banner  # noqa: E402
from deployer.sandbox.topology import Sandbox  # noqa: E402

SFTP_USER = "deployer-sftp"
TEST_USER = "deployer-test"


def ensure_user(name: str) -> None:
    """Create a locked-password system user that sshd lets in with a key."""
    if subprocess.run(["id", name], capture_output=True).returncode != 0:
        subprocess.run(
            ["useradd", "--system", "--create-home", "--shell", "/bin/sh", name], check=True
        )
    subprocess.run(["usermod", "-p", "*", name], check=True)


def corpus(root: Path, files: int, big_mb: int) -> dict[str, Path]:
    """Small files (4 KiB of random bytes each, in 20 directories) and one large random file."""
    small, big = root / "small", root / "big"
    for index in range(files):
        folder = small / f"d{index % 20}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{index}.bin").write_bytes(os.urandom(4096))
    big.mkdir(parents=True)
    with (big / "blob.bin").open("wb") as handle:
        for _ in range(big_mb):
            handle.write(os.urandom(1 << 20))
    for tree in (small, big):
        for item in tree.rglob("*"):
            os.utime(item, (time.time() - 3600,) * 2)
    return {"small": small, "big": big}


def changed(tree: Path, root: Path) -> Path:
    """A copy of tree with 1 % of its files rewritten."""
    copy = root / f"{tree.name}-changed"
    shutil.copytree(tree, copy, symlinks=True)
    files = sorted(p for p in copy.rglob("*") if p.is_file())
    for path in files[:: max(1, len(files) // max(1, len(files) // 100))][
        : max(1, len(files) // 100)
    ]:
        path.write_bytes(os.urandom(path.stat().st_size))
    return copy


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    run = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=1800, stdin=subprocess.DEVNULL
    )
    if run.returncode != 0:
        raise SystemExit(
            f"{argv[:3]} failed ({run.returncode}): {run.stdout[-2000:]}{run.stderr[-2000:]}"
        )
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rtt-ms", default="0,20", help="comma-separated round-trip times to emulate"
    )
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--big-mb", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--deployer-only", action="store_true", help="skip sftp and scp")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the SFTP-only account is a second user")
    ensure_user(TEST_USER)
    ensure_user(SFTP_USER)
    base = Path(tempfile.mkdtemp(prefix="bench-sftp-"))
    base.chmod(0o755)
    config = f"AllowUsers {SFTP_USER}\nMatch User {SFTP_USER}\n  ForceCommand internal-sftp\n"
    box = Sandbox(base / "sandbox", user=TEST_USER, target_config=config).start()
    relay: subprocess.Popen[bytes] | None = None
    try:
        trees = corpus(base / "corpus", args.files, args.big_mb)
        redeploy = {name: changed(tree, base / "corpus") for name, tree in trees.items()}
        work = base / "work"
        work.mkdir()
        shutil.chown(work, user=SFTP_USER)
        rows = []
        for rtt in (float(x) for x in args.rtt_ms.split(",")):
            port = box.jump.port
            if rtt:
                port = free_port()
                relay = subprocess.Popen(
                    [sys.executable, str(REPO / "bench" / "relay.py"), "relay", "--forward",
                     f"127.0.0.1:{port}=127.0.0.1:{box.jump.port}", "--rtt-ms", str(rtt), "--max-seconds", "3600"],
                )  # fmt: skip
                if not wait_for_banner(port, time.monotonic() + 15):
                    raise SystemExit("the relay did not come up")
            known = base / "known_hosts"
            known.write_text(
                box.known_hosts() + "".join(f"[127.0.0.1]:{port} {k}\n" for k in box.jump.host_keys)
            )
            ssh_config = base / "ssh_config"
            ssh_config.write_text(
                f"Host jump\n  HostName 127.0.0.1\n  Port {port}\n  User {TEST_USER}\n"
                f"Host target\n  HostName localhost\n  Port {box.tunnel_port}\n  User {SFTP_USER}\n  ProxyJump jump\n"
                f"Host *\n  IdentityFile {box.ci_key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {known}\n"
                "  StrictHostKeyChecking yes\n  BatchMode yes\n"
            )
            env = {
                **os.environ,
                **box.environment(),
                "CI": "true",
                "SSH_KNOWN_HOSTS": known.read_text(),
            }
            route = [
                "--to",
                f"{SFTP_USER}@localhost:{box.tunnel_port}",
                "--jump",
                f"{TEST_USER}@127.0.0.1:{port}",
            ]
            for name, tree in trees.items():
                times: dict[str, list[float]] = {"deployer push": [], "deployer redeploy 1%": [],
                                                 "sftp -b put -r": [], "scp -r": []}  # fmt: skip
                for attempt in range(args.repeat):
                    path = work / f"{name}-{rtt:g}-{attempt}"
                    deploy = [sys.executable, "-m", "deployer", "push", *route, "--path", str(path)]
                    times["deployer push"].append(timed([*deploy[:4], str(tree), *deploy[4:]], env))
                    times["deployer redeploy 1%"].append(
                        timed([*deploy[:4], str(redeploy[name]), *deploy[4:]], env)
                    )
                    if args.deployer_only:
                        continue
                    dest = work / f"sftp-{name}-{rtt:g}-{attempt}"
                    batch = base / "batch"
                    batch.write_text(f"mkdir {dest}\nput -r {tree} {dest}\n")
                    times["sftp -b put -r"].append(
                        timed(["sftp", "-F", str(ssh_config), "-b", str(batch), "target"], env)
                    )
                    dest = work / f"scp-{name}-{rtt:g}-{attempt}"
                    times["scp -r"].append(
                        timed(
                            ["scp", "-F", str(ssh_config), "-r", str(tree), f"target:{dest}"], env
                        )
                    )
                for method, values in times.items():
                    if values:
                        rows.append((f"{rtt:g} ms", name, method, statistics.median(values)))
            if relay is not None:
                relay.terminate()
                relay.wait(timeout=10)
                relay = None
        print(
            f"| RTT | corpus ({args.files} x 4 KiB files / {args.big_mb} MiB file) | method | median s |"
        )
        print("|---|---|---|---|")
        for rtt_text, name, method, seconds in rows:
            print(f"| {rtt_text} | {name} | {method} | {seconds:.2f} |")
    finally:
        if relay is not None:
            relay.terminate()
        box.stop()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
