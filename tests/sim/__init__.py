"""Helpers for the simulator's tests: small labs and workloads written on the fly."""

from __future__ import annotations

from pathlib import Path

from testlab.domain.labfile import LabDef, parse_lab_text
from testlab.sim.workload import Workload, parse_workload

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "sim"


def lab(text: str) -> LabDef:
    return parse_lab_text(text, "lab.yaml")


def host_lab(hosts: dict[str, list[str]], limits: str = "", shared: dict[str, str] | None = None) -> LabDef:
    """hosts: host -> VM names; shared: VM -> the domain it shares (its snapshot is its own name)."""
    shared = shared or {}
    lines = ["hosts:"]
    for host in hosts:
        lines.append(f"  - {{name: {host}, backend: libvirt, uri: 'test:///{host}', limits: {{{limits}}}}}")
    lines.append("vms:")
    for host, names in hosts.items():
        for name in names:
            domain = shared.get(name, name)
            lines.append(
                f"  - {{name: {name}, host: {host}, domain: {domain}, snapshot: {name}, labels: [all]}}"
            )
    return lab("\n".join(lines) + "\n")


def workload(tmp_path: Path, text: str, jobs: dict[str, str]) -> Workload:
    for name, content in jobs.items():
        (tmp_path / name).write_text(content)
    path = tmp_path / "workload.yaml"
    path.write_text(text)
    return parse_workload(path)
