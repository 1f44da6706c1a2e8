"""Guest agent benchmark on loopback: command round trip and file transfer throughput.

Run: python bench/bench_agent.py [--runs N] [--size-mb M] [--transfers T]

The transfer baseline is a raw socket copy of the same file over loopback (sendfile from the file on one
side, recv into a new file on the other), so the ratio shows what HTTP, checksums and tar cost on top of
moving the bytes. Raw copies, uploads and downloads take turns, T of each, and each line reports the
median, so a noisy neighbour on the machine skews all three alike.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from testlab.agent import server as server_module
from testlab.agent.client import AgentClient


def start_agent(root: Path) -> tuple[subprocess.Popen[str], str, str]:
    token = secrets.token_hex(16)
    (root / "token").write_text(token)
    cmd = [sys.executable, server_module.__file__, "--listen", "127.0.0.1:0"]
    cmd += ["--token-file", str(root / "token"), "--workdir", str(root / "work")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    match = re.search(r"listening on (\S+)", proc.stdout.readline())
    if not match:
        proc.kill()
        raise SystemExit("agent did not start")
    return proc, match.group(1), token


def raw_copy(src: Path, dst: Path) -> float:
    """Seconds to move src into dst through a loopback TCP connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def send() -> None:
        conn, _ = listener.accept()
        with conn, open(src, "rb") as f:
            conn.sendfile(f)

    started = time.perf_counter()
    sender = threading.Thread(target=send)
    sender.start()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    with socket.create_connection(("127.0.0.1", port)) as s, open(dst, "wb") as out:
        while n := s.recv_into(buf):
            out.write(view[:n])
    sender.join()
    listener.close()
    return time.perf_counter() - started


async def round_trips(client: AgentClient, runs: int) -> list[float]:
    times = []
    for i in range(runs):
        started = time.perf_counter()
        st = await client.start(f"rt-{i}", argv=["true"])
        final = await client.wait(st.id, boot_id=st.boot_id)
        times.append((time.perf_counter() - started) * 1000)
        assert final.exit_code == 0
    return times


async def transfers(client: AgentClient, src: Path, root: Path, count: int) -> tuple[float, float, float]:
    """Median seconds of (raw copy, upload, download), the three interleaved after an untimed round.

    The untimed round lets the kernel settle its page cache for files of this size, which costs the
    first writer of each kind far more than any later one.
    """
    raw, up, down = [], [], []
    for i in range(count + 1):
        raw.append(raw_copy(src, root / "raw.bin"))
        started = time.perf_counter()
        await client.upload(src, "bench/payload.bin")
        up.append(time.perf_counter() - started)
        started = time.perf_counter()
        files = await client.download("bench/payload.bin", root / "down")
        down.append(time.perf_counter() - started)
        assert files and files[0].stat().st_size == src.stat().st_size
        if i == 0:
            raw, up, down = [], [], []
    return statistics.median(raw), statistics.median(up), statistics.median(down)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--transfers", type=int, default=5, help="transfers of each kind (median reported)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        proc, url, token = start_agent(root)
        try:
            src = root / "payload.bin"
            with open(src, "wb") as f:
                for _ in range(args.size_mb):
                    f.write(os.urandom(1 << 20))
            mb = src.stat().st_size / 1e6

            async def scenario() -> tuple[list[float], tuple[float, float, float]]:
                async with AgentClient(url, token) as client:
                    await round_trips(client, 10)  # warm-up
                    rtt = await round_trips(client, args.runs)
                    return rtt, await transfers(client, src, root, args.transfers)

            rtt, (raw, up, down) = asyncio.run(scenario())
        finally:
            proc.terminate()
            proc.wait(timeout=10)

    rtt.sort()
    p90 = rtt[int(len(rtt) * 0.9)]
    print(f"{'measure':<34}{'value':>12}  {'vs raw socket':>14}")
    print(f"{'start `true` + exit code, median':<34}{statistics.median(rtt):>9.2f} ms")
    print(f"{'start `true` + exit code, p90':<34}{p90:>9.2f} ms")
    print(f"{'raw socket copy':<34}{mb / raw:>7.0f} MB/s  {1.0:>13.2f}x")
    print(f"{'upload (sha256 checked)':<34}{mb / up:>7.0f} MB/s  {up / raw:>13.2f}x")
    print(f"{'download (tar stream)':<34}{mb / down:>7.0f} MB/s  {down / raw:>13.2f}x")
    print(
        f"({args.runs} round trips; {mb:.0f} MB file, median of {args.transfers} transfers each;"
        " ratio = time / raw socket copy time)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
