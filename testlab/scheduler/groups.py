"""Which hosts must be planned together (the simulator, and the engine round after round).

`plan()` decides each host on its own (limits, domains and sacrifices are per host, and queue order
only compares tasks of one host) except for pool tasks: a pool task takes the best of its candidates
over all their hosts (spread over the hosts, the least loaded first), so what one host of a pool
does depends on the others. Hosts linked by a pool, directly or through other pools, form a group;
planning group by group gives exactly the actions of one plan over the whole lab, and a group with
no pool task queued may still be planned host by host.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def host_groups(
    hosts: Iterable[str], vm_hosts: Mapping[str, str], pools: Iterable[Iterable[str]]
) -> dict[str, str]:
    """Host -> the name of its group (the first of its hosts by name). `vm_hosts`: VM -> its host;
    `pools`: the candidate VMs of each pool (VMs `vm_hosts` does not know are left out)."""
    parent = {host: host for host in hosts}

    def root(host: str) -> str:
        while parent[host] != host:
            parent[host] = parent[parent[host]]
            host = parent[host]
        return host

    for candidates in pools:
        linked = sorted({root(vm_hosts[vm]) for vm in candidates if vm in vm_hosts})
        for other in linked[1:]:
            parent[other] = linked[0]
    return {host: root(host) for host in parent}
