"""A stand-in for physical test hosts with a real guest agent each, for the `command` backend.

Each host ("domain") is a directory with a disk (the agent's work dir, which survives a power cycle
as a real disk would) and an agent listening on a fixed port of 127.0.0.1. A revert reinstalls: the
disk is wiped. A power cycle kills every process of the running hosts and starts their agents again
on the same disk, like pulling the plug and booting.

Usage: agenthost.py STATE_DIR OP [DOMAIN [SNAPSHOT]]; STATE_DIR/<domain>.json holds {"port": N}.
Exit 3: no such domain.
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

AGENT = Path(__file__).resolve().parents[3] / "testlab" / "agent" / "server.py"


def children(pid):
    found, todo = [], [pid]
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    table.setdefault(int(stat.read().rsplit(")", 1)[1].split()[1]), []).append(int(entry))
            except OSError:
                pass
    while todo:
        for child in table.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def power_off(root, domain, data):
    pid = data.pop("pid", None)
    if pid and alive(pid):
        for victim in [pid, *children(pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)


def power_on(root, domain, data):
    if data.get("pid") and alive(data["pid"]):
        return
    disk = root / domain / "disk"
    disk.mkdir(parents=True, exist_ok=True)
    with open(root / domain / "agent.log", "ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                str(AGENT),
                "--listen",
                f"127.0.0.1:{data['port']}",
                "--token-file",
                str(root / "token"),
                "--workdir",
                str(disk),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    data["pid"] = process.pid
    token = (root / "token").read_text().strip()
    request = urllib.request.Request(
        f"http://127.0.0.1:{data['port']}/v1/info", headers={"Authorization": f"Bearer {token}"}
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(request, timeout=1).read()
            return
        except OSError:
            time.sleep(0.05)
    print("agent did not come up")
    sys.exit(1)


def main():
    root, op, *rest = sys.argv[1:]
    root = Path(root)
    if op == "health":
        print("all good")
        return 0
    domains = [rest[0]] if rest else [p.stem for p in root.glob("*.json")]
    for domain in domains:
        path = root / f"{domain}.json"
        if not path.is_file():
            print(f"no such host {domain}")
            return 3
        data = json.loads(path.read_text())
        if op == "state":
            print("running" if data.get("pid") and alive(data["pid"]) else "off")
        elif op == "power_on":
            power_on(root, domain, data)
        elif op == "power_off":
            power_off(root, domain, data)
        elif op == "revert":
            power_off(root, domain, data)
            shutil.rmtree(root / domain / "disk", ignore_errors=True)
            power_on(root, domain, data)
        elif op == "power_cycle":
            if data.get("pid") and alive(data["pid"]):
                power_off(root, domain, data)
                power_on(root, domain, data)
            linger = root / "power_cycle_linger"  # seconds the command lasts after the machines are back
            if linger.is_file():
                time.sleep(float(linger.read_text()))
        elif op == "list_snapshots":
            print("clean")
        else:
            print(f"unknown operation {op}")
            return 2
        path.write_text(json.dumps(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
