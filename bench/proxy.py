"""Does a proxy in front of the jump host cost throughput? `deployer push` of one large file, direct
vs through tinyproxy (HTTP CONNECT) vs through Dante (SOCKS5), in the same run, round-robin.

    python bench/proxy.py                      # 32 MB, 3 rounds, 20 ms / 100 Mbit link: ~1 minute
    python bench/proxy.py --size-mb 64 --repeat 5 --rtt-ms 40 --rate-mbit 50

The link (bench/relay.py: delay and a rate cap) sits in front of the jump sshd, so every route
crosses the same emulated WAN; the proxies run on the runner's side, as a corporate proxy would.
Needs root (Dante checks a system password), tinyproxy and dante-server (`./dev setup`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Run as a script (`sudo python bench/proxy.py`), Python puts bench/ on sys.path, not the
# repository root: the root makes `bench.*`, `tests.integration.*` and this checkout's `deployer`
# importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.login import login_user
from bench.relay import Link, Relay
from deployer.sandbox.topology import Sandbox
from tests.integration.proxies import PROXY_PASSWORD, PROXY_USER, start_dante, start_tinyproxy

GOAL = 0.90  # a proxied route keeps at least 90 % of the direct route's throughput
HTTP_USER, HTTP_PASSWORD = "bench", "bench-pw"


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print the table; exit 1 when a route misses the goal."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=32, help="size of the file pushed")
    parser.add_argument("--repeat", type=int, default=3, help="rounds over the three routes")
    parser.add_argument("--rtt-ms", type=float, default=20.0)
    parser.add_argument("--rate-mbit", type=float, default=100.0, help="0: no cap (loopback speed)")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="deployer-bench-proxy-"))
    base.chmod(0o755)
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, base, True)
        user = login_user()
        box = stack.enter_context(Sandbox(base / "sandbox", user=user))
        relay = Relay([(("127.0.0.1", 0), ("127.0.0.1", box.jump.port))],
                      Link.for_profile(args.rtt_ms, args.rate_mbit or None))  # fmt: skip
        wan_port = relay.start()[0][1]
        stack.callback(relay.stop)
        http = start_tinyproxy(base / "tinyproxy", user=HTTP_USER, password=HTTP_PASSWORD,
                               ports=[wan_port], allowed_hosts=["127.0.0.1"])  # fmt: skip
        stack.callback(http.stop)
        socks = start_dante(base / "dante", allowed=[("127.0.0.1", wan_port)])
        stack.callback(socks.stop)
        artifact = base / "artifact"
        artifact.mkdir()
        with (artifact / "blob.bin").open("wb") as blob:  # incompressible, like a built bundle
            for _ in range(args.size_mb):
                blob.write(os.urandom(1 << 20))
        work = base / "work"
        work.mkdir()
        shutil.chown(work, user=user)
        known = "".join(f"[127.0.0.1]:{wan_port} {key}\n" for key in box.jump.host_keys)
        known += "".join(f"[localhost]:{box.tunnel_port} {key}\n" for key in box.target.host_keys)
        env = {
            **os.environ,
            "CI": "true",
            "SSH_PRIVATE_KEY": box.ci_key.read_text(),
            "SSH_KNOWN_HOSTS": known,
        }
        routes = {
            "direct": ([], {}),
            "HTTP CONNECT (tinyproxy)": (["--proxy", f"http://{HTTP_USER}@127.0.0.1:{http.port}"],
                                         {"DEPLOYER_PROXY_PASSWORD": HTTP_PASSWORD}),
            "SOCKS5 (Dante)": (["--proxy", f"socks5h://{PROXY_USER}@127.0.0.1:{socks.port}"],
                               {"DEPLOYER_PROXY_PASSWORD": PROXY_PASSWORD}),
        }  # fmt: skip
        times: dict[str, list[float]] = {name: [] for name in routes}
        for round_ in range(args.repeat):
            for name, (flags, extra) in routes.items():
                argv_ = [sys.executable, "-m", "deployer", "push", str(artifact), "--no-delta", "--keep", "1",
                         "--to", f"{user}@localhost:{box.tunnel_port}", "--jump", f"{user}@127.0.0.1:{wan_port}",
                         "--path", str(work / "app"), *flags]  # fmt: skip
                started = time.monotonic()
                done = subprocess.run(
                    argv_, env={**env, **extra}, capture_output=True, text=True, timeout=600
                )
                elapsed = time.monotonic() - started
                if done.returncode != 0:
                    print(f"{name}: push failed ({done.returncode}): {done.stderr.strip()[-400:]}")
                    return 1
                times[name].append(elapsed)
                print(f"round {round_ + 1}/{args.repeat}: {name}: {elapsed:.2f} s", file=sys.stderr)
    return report(times, args)


def report(times: dict[str, list[float]], args: argparse.Namespace) -> int:
    """The table: median wall time, MB/s and the ratio to the direct route."""
    link = f"{args.rtt_ms:g} ms RTT, " + (
        f"{args.rate_mbit:g} Mbit/s" if args.rate_mbit else "no rate cap"
    )
    print(f"\ndeployer push of {args.size_mb} MB, median of {args.repeat}, link {link}\n")
    direct = statistics.median(times["direct"])
    rows = [("route", "median s", "MB/s", "vs direct")]
    failed = False
    for name, samples in times.items():
        median = statistics.median(samples)
        ratio = direct / median
        failed |= ratio < GOAL
        rows.append((name, f"{median:.2f}", f"{args.size_mb / median:.1f}", f"{ratio:.0%}"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    print(
        f"\ngoal: every proxied route within {1 - GOAL:.0%} of direct: {'FAIL' if failed else 'PASS'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
