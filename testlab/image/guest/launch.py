#!/usr/bin/python3
"""Starts the testlab agent on the first connection after a boot or a snapshot revert.

Usage: launch.py PORT AGENT-OPTIONS...  (the agent's own options, e.g. --token-file F --workdir D)

A VM's clean snapshot is taken while this process waits, before any agent runs. A revert brings it
back waiting, so the first connection afterwards starts a fresh agent with a new boot id: the engine
tells a revert happened from that, as after a real reboot. The agent module is imported before the
snapshot, so starting it costs no interpreter start-up, and the listening socket is handed to it
(systemd-style socket activation), so the connection that woke it up is served, not refused.

Before the agent starts, two things a memory snapshot brings back are renewed: the clock, set from the
hardware clock (the guest's clock would otherwise resume at the moment of the snapshot), and the
kernel's random number generator, reseeded with the moment of activation (every revert would
otherwise hand out the same "random" numbers, the agent's boot id included).
"""

import fcntl
import importlib.util
import os
import select
import socket
import struct
import subprocess
import sys
import time

AGENT = "/opt/testlab/agent.py"
RNDRESEEDCRNG = 0x5207  # _IO('R', 0x07): reseed the CRNG from the input pool (root only)


def load_agent():
    spec = importlib.util.spec_from_file_location("testlab_agent", AGENT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def listen(port):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    sock.listen(128)
    return sock


def renew_clock():
    try:
        subprocess.run(["/bin/busybox", "hwclock", "-s", "-u"], timeout=10, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"testlab-launcher: cannot set the clock: {exc}", flush=True)


def reseed_random():
    moment = struct.pack("=qqqi", time.time_ns(), time.monotonic_ns(), time.perf_counter_ns(), os.getpid())
    try:
        with open("/dev/urandom", "wb", buffering=0) as pool:
            pool.write(moment)
            fcntl.ioctl(pool, RNDRESEEDCRNG)
    except OSError as exc:
        print(f"testlab-launcher: cannot reseed the random number generator: {exc}", flush=True)


def main(argv):
    port = int(argv[0])
    agent = load_agent()
    sock = listen(port)
    print(f"testlab-launcher: ready on port {port}", flush=True)
    while not select.select([sock], [], [])[0]:
        pass
    renew_clock()
    reseed_random()
    if sock.fileno() != 3:
        os.dup2(sock.fileno(), 3)
        sock.close()
    os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
    os.environ.setdefault("HOME", "/root")
    os.environ.setdefault("LANG", "C.UTF-8")
    return agent.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
