"""The benchmark's link emulator (bench/relay.py): delay and rate are applied, bytes arrive intact."""

from __future__ import annotations

import importlib.util
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

RELAY = Path(__file__).resolve().parents[3] / "bench" / "relay.py"
RTT_MS = 60.0
RATE_MBIT = 40.0


@pytest.fixture(scope="module")
def relay() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("bench_relay", RELAY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_relay_delays_caps_and_keeps_bytes_intact(relay: ModuleType) -> None:
    echo = relay.EchoServer().start()
    sink = relay.SinkServer().start()
    link = relay.Link.for_profile(RTT_MS, RATE_MBIT)
    server = relay.Relay([(("127.0.0.1", 0), echo.address), (("127.0.0.1", 0), sink.address)], link)
    echo_at, sink_at = server.start()
    try:
        # the first exchange also waits for the emulated TCP handshake
        samples = relay.ping_pong(echo_at, count=8, timeout=20)[1:]
        result = relay.bulk(sink_at, 3 << 20, timeout=30)
    finally:
        server.stop()
        echo.stop()
        sink.stop()
    rtt_ms = [s * 1000 for s in samples]
    assert min(rtt_ms) >= RTT_MS - 1, rtt_ms  # the delay is never shortened
    assert statistics.median(rtt_ms) < RTT_MS + 40, rtt_ms  # and not wildly lengthened
    assert result["intact"], result
    assert result["mbit_per_s"] <= RATE_MBIT * 1.1, result  # the cap holds
    assert result["mbit_per_s"] >= RATE_MBIT * 0.5, result  # and the relay keeps up with it
