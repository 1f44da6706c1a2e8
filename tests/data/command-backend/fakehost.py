"""A stand-in for a rack of physical hosts: keeps each host's power state and install profiles in files.

Usage: fakehost.py STATE_DIR OP [DOMAIN [SNAPSHOT]]. Exit 3: no such domain, 4: no such profile.
"""

import json
import sys
from pathlib import Path


def main() -> int:
    root, op, *rest = sys.argv[1:]
    if op == "health":
        print("all good")
        print(123456789)
        return 0
    if op == "power_cycle":
        for path in Path(root).glob("*.json"):
            data = json.loads(path.read_text())
            data["state"] = "running"
            path.write_text(json.dumps(data))
        return 0
    domain = rest[0]
    path = Path(root) / f"{domain}.json"
    if not path.is_file():
        print(f"no such host {domain}")
        return 3
    data = json.loads(path.read_text())
    if op == "state":
        print(data["state"])
    elif op == "power_on":
        data["state"] = "running"
    elif op == "power_off":
        data["state"] = "off"
    elif op == "list_snapshots":
        print("\n".join(data["profiles"]))
    elif op == "create_snapshot":
        data["profiles"].append(rest[1])
    elif op == "revert":
        if rest[1] not in data["profiles"]:
            print(f"reinstalling {domain}...")
            print(f"no install profile {rest[1]}")
            return 4
        print(f"reinstalling {domain} with {rest[1]}")
        data["state"] = "running"
        data["installed"] = rest[1]
    else:
        print(f"unknown operation {op}")
        return 2
    path.write_text(json.dumps(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
