"""The lab-file parser: every error as the exact one-line message users see, defaults, dump round trip."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from testlab.domain.commands import (
    BACKEND_COMMANDS,
    COMMAND_OPERATIONS,
    COMMAND_PLACEHOLDERS,
    REQUIRED_COMMANDS,
    template_problem,
)
from testlab.domain.errors import DefinitionError
from testlab.domain.hostoptions import BACKEND_OPERATIONS, HOST_OPTIONS
from testlab.domain.labfile import HostDef, LabDef, VMDef, dump_lab, parse_lab, parse_lab_text
from testlab.domain.limits import LIMIT_FIELDS, HostLimits

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

GOOD = """\
hosts:
  - name: h1
    backend: local
    uri: local:///var/tmp/lab
vms:
  - name: vm1
    host: h1
    snapshot: clean
"""


def lab(text: str, base_dir: Path | None = None) -> LabDef:
    return parse_lab_text(textwrap.dedent(text), source="lab.yaml", base_dir=base_dir)


def error_of(text: str, base_dir: Path | None = None) -> str:
    with pytest.raises(DefinitionError) as info:
        lab(text, base_dir)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_minimal_lab_has_the_defaults() -> None:
    parsed = lab(GOOD)
    assert parsed.hosts == (HostDef(name="h1", backend="local", uri="local:///var/tmp/lab"),)
    host = parsed.hosts[0]
    assert host.limits == HostLimits()
    assert dict(host.commands) == {}
    assert host.agent_token_file is None and host.description == ""
    vm = parsed.vms[0]
    assert vm == VMDef(name="vm1", host="h1", domain="vm1", snapshot="clean")
    assert (vm.role, vm.labels, vm.description, vm.agent) == ("base", (), "", None)


@pytest.mark.parametrize(
    ("given", "reverting", "while_running"),
    [
        ("{}", 1, 1),
        ("{max_active: 4, max_running: 2}", 2, 2),
        ("{max_active: 4, max_running: 4}", 1, 1),
        ("{max_active: 6, max_running: 2, max_reverting: 3}", 3, 3),
        ("{max_active: 4, max_running: 2, max_reverts_while_running: 0}", 2, 0),
    ],
)
def test_revert_limits_follow_the_others_when_unset(given: str, reverting: int, while_running: int) -> None:
    parsed = lab(H + f"    limits: {given}\nvms: []\n")
    limits = parsed.hosts[0].limits
    assert (limits.max_reverting, limits.max_reverts_while_running) == (reverting, while_running)
    assert parse_lab_text(dump_lab(parsed)) == parsed


def test_full_lab_reads_every_field(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "token").write_text("s3cret\n")
    parsed = lab(
        """\
        hosts:
          - name: kvm-1
            backend: libvirt
            uri: qemu+ssh://root@kvm-1/system
            description: rack 3
            agent_token_file: secrets/token
            limits:
              max_active: 4
              max_running: 3
              max_reverting: 2
              max_reverts_while_running: 1
              max_ready_when_idle: 0
              sleep_after_revert: 1m30s
            commands:
              power_cycle: ipmitool -H kvm-1-bmc power cycle
          - name: board.7
            backend: command
            uri: command:board7
            limits: {sleep_after_revert: 2.5}
            commands:
              power_on: pdu on 7
              power_off: pdu off 7
              state: pdu status 7
              revert: flash-image 7 {snapshot}
        vms:
          - name: win10
            host: kvm-1
            snapshot: clean
            labels: [win10, en]
            agent: http://10.0.0.5:8123
          - name: win10-fr
            host: kvm-1
            domain: win10
            snapshot: clean-fr
            role: extra
            labels: [win10, fr]
            description: French locale
          - name: board7
            host: board.7
            snapshot: image-2024
            role: retired
            agent: https://board7.lab:9000/
        """,
        base_dir=tmp_path,
    )
    kvm, board = parsed.hosts
    assert kvm.limits == HostLimits(4, 3, 2, 1, 0, 90.0)
    assert kvm.agent_token_file == str(tmp_path / "secrets" / "token")
    assert dict(kvm.commands) == {"power_cycle": "ipmitool -H kvm-1-bmc power cycle"}
    assert board.limits == HostLimits(sleep_after_revert=2.5)
    assert board.commands["revert"] == "flash-image 7 {snapshot}"
    assert [vm.domain for vm in parsed.vms] == ["win10", "win10", "board7"]
    assert parsed.vms[1].role == "extra" and parsed.vms[1].labels == ("win10", "fr")
    assert parsed.vms[0].agent == "http://10.0.0.5:8123"
    hash(parsed)  # frozen all the way down: usable as a cache key
    assert parse_lab_text(dump_lab(parsed)) == parsed


def test_empty_lists_are_a_valid_empty_lab() -> None:
    assert lab("hosts: []\nvms: []\n") == LabDef(hosts=(), vms=())


H = "hosts:\n  - name: h1\n    backend: local\n    uri: local:///var/tmp/lab\n"  # host h1 on lines 2-4

ERRORS = [
    ("empty", "", "lab.yaml: empty file (expected a mapping with hosts: and vms:)"),
    ("comments only", "# nothing\n", "lab.yaml: empty file (expected a mapping with hosts: and vms:)"),
    ("top list", "- a\n", "lab.yaml:1: expected a mapping with hosts: and vms: at the top level, got a list"),
    (
        "top scalar",
        "hello\n",
        "lab.yaml:1: expected a mapping with hosts: and vms: at the top level, got 'hello'",
    ),
    (
        "bad yaml",
        "hosts: [\n",
        "lab.yaml:2: invalid YAML: expected the node content, but found '<stream end>' "
        "(while parsing a flow node)",
    ),
    (
        "bad indent",
        "hosts:\n  - name: a\n   backend: local\n",
        "lab.yaml:3: invalid YAML: expected <block end>, "
        "but found '<block mapping start>' (while parsing a block collection)",
    ),
    (
        "tab",
        "hosts:\n\t- a\n",
        "lab.yaml:2: invalid YAML: found character '\\t' that cannot start any token "
        "(while scanning for the next token)",
    ),
    (
        "duplicate key",
        "hosts: []\nvms: []\nhosts: []\n",
        "lab.yaml:3: duplicate key 'hosts' (first on line 1)",
    ),
    (
        "unknown top key",
        "hosts: []\nvms: []\ngroups: []\n",
        "lab.yaml:3: groups: unknown key (allowed: hosts, vms)",
    ),
    ("missing vms", "hosts: []\n", "lab.yaml:1: vms: missing required key"),
    ("hosts not list", "hosts: {}\nvms: []\n", "lab.yaml:1: hosts: expected a list, got a mapping"),
    ("host not mapping", "hosts: [h1]\nvms: []\n", "lab.yaml:1: hosts[0]: expected a mapping, got 'h1'"),
    (
        "host unknown key",
        H + "    colour: red\nvms: []\n",
        "lab.yaml:5: hosts[0].colour: unknown key (allowed: agent_token_file, backend, commands, "
        "description, domain_type, limits, min_free_disk, name, options, uri)",
    ),
    (
        "host missing uri",
        "hosts:\n  - name: h1\n    backend: local\nvms: []\n",
        "lab.yaml:2: hosts[0].uri: missing required key",
    ),
    (
        "host name charset",
        "hosts:\n  - name: -h\n    backend: local\n    uri: local:///x\nvms: []\n",
        "lab.yaml:2: hosts[0].name: invalid name '-h': use letters, digits, '.', '_' and '-', "
        "starting with a "
        "letter or digit",
    ),
    (
        "host name type",
        "hosts:\n  - name: 12\n    backend: local\n    uri: local:///x\nvms: []\n",
        "lab.yaml:2: hosts[0].name: expected a string, got integer 12 (quote it to make it a string)",
    ),
    (
        "bad backend",
        "hosts:\n  - name: h1\n    backend: xen\n    uri: xen:///\nvms: []\n",
        "lab.yaml:3: hosts[0].backend: expected one of local, libvirt, command, got 'xen'",
    ),
    (
        "relative local uri",
        "hosts:\n  - name: h1\n    backend: local\n    uri: local:sandbox\nvms: []\n",
        "lab.yaml:4: hosts[0].uri: expected local:///absolute/path for a local host, got 'local:sandbox'",
    ),
    (
        "relative local uri 2",
        "hosts:\n  - name: h1\n    backend: local\n    uri: local://sandbox\nvms: []\n",
        "lab.yaml:4: hosts[0].uri: expected local:///absolute/path for a local host, got 'local://sandbox'",
    ),
    (
        "local uri root",
        "hosts:\n  - name: h1\n    backend: local\n    uri: local:///\nvms: []\n",
        "lab.yaml:4: hosts[0].uri: a local host needs its own directory, not '/'",
    ),
    (
        "local uri dotdot",
        "hosts:\n  - name: h1\n    backend: local\n    uri: local:///a/../b\nvms: []\n",
        "lab.yaml:4: hosts[0].uri: the path of a local URI must not contain '..', got 'local:///a/../b'",
    ),
    (
        "duplicate host",
        H + "  - name: h1\n    backend: local\n    uri: local:///y\nvms: []\n",
        "lab.yaml:5: hosts[1].name: duplicate host name 'h1' (first on line 2)",
    ),
    (
        "limits type",
        H + "    limits: 3\nvms: []\n",
        "lab.yaml:5: hosts[0].limits: expected a mapping, got integer 3",
    ),
    (
        "limits unknown",
        H + "    limits:\n      max_idle: 3\nvms: []\n",
        "lab.yaml:6: hosts[0].limits.max_idle: unknown key (allowed: max_active, max_ready_when_idle, "
        "max_reverting, max_reverts_while_running, max_running, sleep_after_revert)",
    ),
    (
        "limit negative",
        H + "    limits:\n      max_active: -1\nvms: []\n",
        "lab.yaml:6: hosts[0].limits.max_active: expected an integer from 0 to 2147483647, got -1",
    ),
    (
        "limit float",
        H + "    limits:\n      max_running: 1.5\nvms: []\n",
        "lab.yaml:6: hosts[0].limits.max_running: expected an integer, got number 1.5",
    ),
    (
        "limit bool",
        H + "    limits:\n      max_running: yes\nvms: []\n",
        "lab.yaml:6: hosts[0].limits.max_running: expected an integer, got boolean true",
    ),
    (
        "sleep bad",
        H + "    limits:\n      sleep_after_revert: soon\nvms: []\n",
        "lab.yaml:6: hosts[0].limits.sleep_after_revert: expected a duration like 90s, 30m, 2h or 1h30m "
        "(or a number of seconds), got 'soon'",
    ),
    (
        "sleep negative",
        H + "    limits:\n      sleep_after_revert: -3\nvms: []\n",
        "lab.yaml:6: hosts[0].limits.sleep_after_revert: must not be negative, got -3",
    ),
    (
        "unknown command",
        H + "    commands:\n      reboot: ipmitool power cycle\nvms: []\n",
        "lab.yaml:6: hosts[0].commands.reboot: unknown operation (allowed: power_on, power_off, "
        "state, revert, power_cycle, health, list_snapshots, create_snapshot)",
    ),
    (
        "command not string",
        H + "    commands:\n      health: [ping]\nvms: []\n",
        "lab.yaml:6: hosts[0].commands.health: expected a string, got a list",
    ),
    (
        "command backend missing",
        "hosts:\n  - name: b\n    backend: command\n    uri: cmd:b\n    commands:\n"
        "      power_on: pdu on\n      state: st\nvms: []\n",
        "lab.yaml:5: hosts[0].commands: missing power_off, revert (required by backend 'command')",
    ),
    (
        "command backend none",
        "hosts:\n  - name: b\n    backend: command\n    uri: cmd:b\nvms: []\n",
        "lab.yaml:2: hosts[0].commands: missing power_on, power_off, state, revert (required by "
        "backend 'command')",
    ),
    (
        "token missing",
        H + "    agent_token_file: /nonexistent/token\nvms: []\n",
        "lab.yaml:5: hosts[0].agent_token_file: no such file: '/nonexistent/token'",
    ),
    ("vms not list", H + "vms: vm1\n", "lab.yaml:5: vms: expected a list, got 'vm1'"),
    (
        "vm unknown key",
        H + "vms:\n  - name: v\n    host: h1\n    snapshot: s\n    os: linux\n",
        "lab.yaml:9: vms[0].os: unknown key (allowed: agent, description, domain, host, labels, max_uses, "
        "name, protect_after, role, snapshot, wipe, wipe_after_failure)",
    ),
    (
        "vm missing snapshot",
        H + "vms:\n  - name: v\n    host: h1\n",
        "lab.yaml:6: vms[0].snapshot: missing required key",
    ),
    (
        "vm unknown host",
        H + "vms:\n  - name: v\n    host: h2\n    snapshot: s\n",
        "lab.yaml:7: vms[0].host: unknown host 'h2' (hosts: h1)",
    ),
    (
        "vm name charset",
        H + "vms:\n  - name: win 10\n    host: h1\n    snapshot: s\n",
        "lab.yaml:6: vms[0].name: invalid name 'win 10': use letters, digits, '.', '_' and '-', "
        "starting with a "
        "letter or digit",
    ),
    (
        "vm empty snapshot",
        H + "vms:\n  - name: v\n    host: h1\n    snapshot: ''\n",
        "lab.yaml:8: vms[0].snapshot: must not be empty",
    ),
    (
        "vm role",
        H + "vms:\n  - name: v\n    host: h1\n    snapshot: s\n    role: deleted\n",
        "lab.yaml:9: vms[0].role: expected one of base, extra, retired, got 'deleted'",
    ),
    (
        "labels not list",
        H + "vms:\n  - name: v\n    host: h1\n    snapshot: s\n    labels: win10\n",
        "lab.yaml:9: vms[0].labels: expected a list, got 'win10'",
    ),
    (
        "label not string",
        H + "vms:\n  - name: v\n    host: h1\n    snapshot: s\n    labels:\n      - a\n      - 7\n",
        "lab.yaml:11: vms[0].labels[1]: expected a string, got integer 7 (quote it to make it a string)",
    ),
    (
        "label duplicate",
        H + "vms:\n  - name: v\n    host: h1\n    snapshot: s\n    labels: [a, a]\n",
        "lab.yaml:9: vms[0].labels[1]: duplicate 'a' (first on line 9)",
    ),
    (
        "label space",
        H + "vms:\n  - name: v\n    host: h1\n    snapshot: s\n    labels: [a b]\n",
        "lab.yaml:9: vms[0].labels[0]: invalid label 'a b': no spaces or commas",
    ),
    (
        "agent url",
        H + "vms:\n  - name: v\n    host: h1\n    snapshot: s\n    agent: 10.0.0.5:8123\n",
        "lab.yaml:9: vms[0].agent: expected an agent URL like http://HOST:PORT, got '10.0.0.5:8123'",
    ),
    (
        "agent no port",
        H + "vms:\n  - name: v\n    host: h1\n    snapshot: s\n    agent: http://vm1\n",
        "lab.yaml:9: vms[0].agent: expected an agent URL like http://HOST:PORT, got 'http://vm1'",
    ),
    (
        "agent bad port",
        H + "vms:\n  - name: v\n    host: h1\n    snapshot: s\n    agent: http://vm1:99999\n",
        "lab.yaml:9: vms[0].agent: expected an agent URL like http://HOST:PORT, got 'http://vm1:99999'",
    ),
    (
        "description type",
        H + "vms:\n  - name: v\n    host: h1\n    snapshot: s\n    description: [x]\n",
        "lab.yaml:9: vms[0].description: expected a string, got a list",
    ),
    (
        "duplicate vm",
        H + "vms:\n  - {name: v, host: h1, snapshot: s}\n  - {name: v, host: h1, snapshot: t}\n",
        "lab.yaml:7: vms[1].name: duplicate VM name 'v' (first on line 6)",
    ),
    (
        "same configuration",
        H + "vms:\n  - {name: a, host: h1, domain: d, snapshot: s}\n"
        "  - {name: b, host: h1, domain: d, snapshot: s}\n",
        "lab.yaml:7: vms[1].snapshot: VM 'a' (line 6) already uses domain 'd' with snapshot 's' on host 'h1'",
    ),
    (
        "same config default domain",
        H + "vms:\n  - {name: d, host: h1, snapshot: s}\n  - {name: b, host: h1, domain: d, snapshot: s}\n",
        "lab.yaml:7: vms[1].snapshot: VM 'd' (line 6) already uses domain 'd' with snapshot 's' on host 'h1'",
    ),
    (
        "python tag",
        "hosts: !!python/object:os.system {}\nvms: []\n",
        "lab.yaml:1: invalid YAML: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/object:os.system'",
    ),
    (
        "yes is a boolean",
        H + "    commands:\n      power_on: on\nvms: []\n",
        "lab.yaml:6: hosts[0].commands.power_on: expected a string, got boolean true (quote it to "
        "make it a string)",
    ),
]


@pytest.mark.parametrize(("text", "expected"), [(t, e) for _, t, e in ERRORS], ids=[i for i, _, _ in ERRORS])
def test_errors_are_precise_one_line_messages(text: str, expected: str) -> None:
    assert error_of(text) == expected


def test_shared_domain_with_other_snapshots_is_fine() -> None:
    parsed = lab(
        H + "vms:\n  - {name: a, host: h1, domain: d, snapshot: s}\n  - {name: b, host: h1, domain: d, "
        "snapshot: t}\n"
    )
    assert [(v.name, v.domain, v.snapshot) for v in parsed.vms] == [("a", "d", "s"), ("b", "d", "t")]


def test_token_file_is_resolved_against_the_lab_directory(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("x")
    path = tmp_path / "lab.yaml"
    path.write_text(H + "    agent_token_file: token\nvms: []\n")
    assert parse_lab(path).hosts[0].agent_token_file == str(tmp_path / "token")


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError) as info:
        parse_lab(tmp_path / "nope.yaml")
    assert str(info.value) == f"{tmp_path / 'nope.yaml'}: no such file"
    with pytest.raises(DefinitionError) as info:
        parse_lab(tmp_path)
    assert str(info.value) == f"{tmp_path}: is a directory, not a file"
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"hosts: []\nvms: [\xff]\n")
    with pytest.raises(DefinitionError) as info:
        parse_lab(binary)
    assert str(info.value) == f"{binary}:2: not UTF-8 text"


def test_dump_omits_defaults_and_round_trips() -> None:
    parsed = lab(GOOD)
    assert dump_lab(parsed) == GOOD.replace("  - ", "- ").replace("\n    ", "\n  ")
    custom = LabDef(
        hosts=(
            HostDef(
                name="h",
                backend="libvirt",
                uri="test:///default",
                limits=HostLimits(max_active=5, sleep_after_revert=0.25),
                description="a: tricky 'string'\nwith two lines",
                domain_type="qemu",
            ),
        ),
        vms=(
            VMDef(
                name="v",
                host="h",
                domain="dom",
                snapshot="yes",
                role="extra",
                labels=("on", "1"),
                agent="http://v:1",
            ),
        ),
    )
    assert parse_lab_text(dump_lab(custom)) == custom


def test_definitions_built_by_hand_are_frozen_and_compare_by_value() -> None:
    host = HostDef(
        name="h", backend="libvirt", uri="test:///default", commands={"power_cycle": "pdu cycle 3"}
    )
    assert hash(host) == hash(
        HostDef("h", "libvirt", "test:///default", commands={"power_cycle": "pdu cycle 3"})
    )
    with pytest.raises(TypeError):
        host.commands["health"] = "true"  # type: ignore[index]
    vm = VMDef(name="v", host="h", domain="v", snapshot="s", labels=["a", "b"])  # type: ignore[arg-type]
    assert vm.labels == ("a", "b")
    hash(vm)


def test_domain_type_is_for_libvirt_hosts_only() -> None:
    libvirt = "hosts:\n  - {name: q, backend: libvirt, uri: 'qemu:///system', domain_type: %s}\nvms: []\n"
    assert lab(libvirt % "qemu").hosts[0].domain_type == "qemu"
    assert lab(libvirt % "kvm").hosts[0].domain_type == "kvm"
    assert lab(libvirt.replace(", domain_type: %s", "")).hosts[0].domain_type is None
    assert error_of(libvirt % "xen") == (
        "lab.yaml:2: hosts[0].domain_type: expected one of kvm, qemu, got 'xen'"
    )
    assert error_of(H + "    domain_type: qemu\nvms: []\n") == (
        "lab.yaml:5: hosts[0].domain_type: only libvirt hosts have a domain type, not local hosts"
    )


def test_dump_writes_labels_inline() -> None:
    text = dump_lab(lab(H + "vms:\n  - {name: v, host: h1, snapshot: s, labels: [win10, 'yes', 'a:b']}\n"))
    assert "  labels: [win10, 'yes', 'a:b']\n" in text


def test_example_lab_parses() -> None:
    parsed = parse_lab(EXAMPLES / "lab.yaml")
    assert [h.backend for h in parsed.hosts] == ["local"]
    assert parsed.hosts[0].uri.startswith("local:///")
    roles = {vm.role for vm in parsed.vms}
    assert roles == {"base", "extra", "retired"}
    assert parse_lab_text(dump_lab(parsed)) == parsed


def test_the_domain_layer_does_not_import_the_scheduler() -> None:
    code = "import sys, testlab.domain.labfile, testlab.domain.jobfile; print(sorted(sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "testlab.scheduler" not in loaded


def test_host_limits_are_still_importable_from_the_scheduler() -> None:
    from testlab.scheduler import HostLimits as from_package
    from testlab.scheduler.snapshot import LIMIT_FIELDS as fields
    from testlab.scheduler.snapshot import HostLimits as from_snapshot

    assert from_package is from_snapshot is HostLimits
    assert fields == LIMIT_FIELDS


# ---- limits (docs/files.md, "Limits") and names every backend accepts

DOMAIN_RULE = (
    "use letters, digits, '.', '_', '+' and '-', starting with a letter or digit, at most 128 characters"
)

LIMIT_ERRORS = [
    (
        "domain with a space",
        H + "vms:\n  - {name: v, host: h1, domain: 'a b', snapshot: clean}\n",
        f"lab.yaml:6: vms[0].domain: invalid domain name 'a b': {DOMAIN_RULE}",
    ),
    (
        "snapshot with a slash",
        H + "vms:\n  - {name: v, host: h1, snapshot: 'a/b'}\n",
        f"lab.yaml:6: vms[0].snapshot: invalid snapshot name 'a/b': {DOMAIN_RULE}",
    ),
    (
        "snapshot starting with a dot",
        H + "vms:\n  - {name: v, host: h1, snapshot: ..}\n",
        f"lab.yaml:6: vms[0].snapshot: invalid snapshot name '..': {DOMAIN_RULE}",
    ),
    (
        "domain of 129 characters",
        H + f"vms:\n  - {{name: v, host: h1, domain: {'d' * 129}, snapshot: clean}}\n",
        "lab.yaml:6: vms[0].domain: too long: 129 characters (at most 128)",
    ),
    (
        "VM name over its column",
        H + f"vms:\n  - {{name: {'v' * 101}, host: h1, snapshot: clean}}\n",
        "lab.yaml:6: vms[0].name: too long: 101 characters (at most 100)",
    ),
    (
        "NUL in a URI",
        'hosts:\n  - {name: h1, backend: libvirt, uri: "qemu:///system\\0"}\nvms: []\n',
        "lab.yaml:2: hosts[0].uri: must not contain NUL characters",
    ),
    (
        "URI over its column",
        f"hosts:\n  - {{name: h1, backend: libvirt, uri: 'test:///{'u' * 500}'}}\nvms: []\n",
        "lab.yaml:2: hosts[0].uri: too long: 508 characters (at most 500)",
    ),
    (
        "newline in an agent URL",
        H + 'vms:\n  - {name: v, host: h1, snapshot: s, agent: "http://a:1\\n"}\n',
        "lab.yaml:6: vms[0].agent: must be a single line, got 'http://a:1\\n'",
    ),
    (
        "two local hosts in one directory",
        H + "  - {name: h2, backend: local, uri: 'local:////var/tmp/lab/'}\nvms: []\n",
        "lab.yaml:5: hosts[1].uri: '/var/tmp/lab' is the directory of host 'h1' (line 2): "
        "each local host needs a directory of its own",
    ),
    (
        "a local host inside another's directory",
        H + "  - {name: h2, backend: local, uri: 'local:///var/tmp/lab/vm1'}\nvms: []\n",
        "lab.yaml:5: hosts[1].uri: '/var/tmp/lab/vm1' lies inside the directory of host 'h1' (line 2): "
        "each local host needs a directory of its own",
    ),
    (
        "a local host around another's directory",
        H + "  - {name: h2, backend: local, uri: 'local:///var/tmp'}\nvms: []\n",
        "lab.yaml:5: hosts[1].uri: '/var/tmp' holds the directory of host 'h1' (line 2): "
        "each local host needs a directory of its own",
    ),
    (
        "limit over 32 bits",
        H + "    limits: {max_active: 99999999999}\nvms: []\n",
        "lab.yaml:5: hosts[0].limits.max_active: expected an integer from 0 to 2147483647, got 99999999999",
    ),
    (
        "sleep of two days",
        H + "    limits: {sleep_after_revert: 2d}\nvms: []\n",
        "lab.yaml:5: hosts[0].limits.sleep_after_revert: must be at most 24h, got 48h",
    ),
    (
        "NUL in a label",
        H + 'vms:\n  - {name: v, host: h1, snapshot: s, labels: ["a\\0"]}\n',
        "lab.yaml:6: vms[0].labels[0]: must not contain NUL characters",
    ),
    (
        "101 labels",
        H
        + "vms:\n  - {name: v, host: h1, snapshot: s, labels: ["
        + ", ".join(f"l{i}" for i in range(101))
        + "]}\n",
        "lab.yaml:6: vms[0].labels: too many items: 101 (at most 100)",
    ),
    (
        "description of 16 KiB and one character",
        H + f"    description: {'d' * (16 * 1024 + 1)}\nvms: []\n",
        "lab.yaml:5: hosts[0].description: too long: 16,385 characters (at most 16,384)",
    ),
    (
        "1,001 hosts",
        "hosts:\n"
        + "".join(f"  - {{name: h{i}, backend: libvirt, uri: 'test:///default'}}\n" for i in range(1001))
        + "vms: []\n",
        "lab.yaml:1: hosts: too many items: 1,001 (at most 1,000)",
    ),
    (
        "unknown placeholder",
        H + "    commands: {power_cycle: 'pdu cycle {nosuch}'}\nvms: []\n",
        "lab.yaml:5: hosts[0].commands.power_cycle: uses unknown placeholders: {nosuch} "
        "(known: {domain}, {snapshot}, {host})",
    ),
    (
        "placeholder in single quotes",
        H + "    commands:\n      power_cycle: ssh bmc 'cycle {domain}'\nvms: []\n",
        "lab.yaml:6: hosts[0].commands.power_cycle: placeholder {domain} is inside single quotes: it is "
        "substituted shell-quoted already, and quoting it again unquotes it; remove the quotes around it",
    ),
    (
        "placeholder in double quotes",
        H + "    commands:\n      power_cycle: 'pdu cycle \"{host}\"'\nvms: []\n",
        "lab.yaml:6: hosts[0].commands.power_cycle: placeholder {host} is inside double quotes: it is "
        "substituted shell-quoted already, and quoting it again unquotes it; remove the quotes around it",
    ),
    (
        "placeholder after a backslash",
        H + "    commands:\n      power_cycle: 'pdu cycle \\{host}'\nvms: []\n",
        "lab.yaml:6: hosts[0].commands.power_cycle: placeholder {host} follows a backslash, which would "
        "undo its quoting",
    ),
    (
        "placeholder with a format",
        H + "    commands:\n      power_cycle: 'pdu cycle {host:.3}'\nvms: []\n",
        "lab.yaml:6: hosts[0].commands.power_cycle: placeholder {host} takes no conversion or format; "
        "write {host}",
    ),
    (
        "unclosed brace",
        H + "    commands:\n      power_cycle: 'pdu cycle {host'\nvms: []\n",
        "lab.yaml:6: hosts[0].commands.power_cycle: not a valid template (expected '}' before end of "
        "string); write {{ and }} for literal braces",
    ),
    (
        "NUL in a command",
        H + '    commands:\n      power_cycle: "pdu cycle\\0"\nvms: []\n',
        "lab.yaml:6: hosts[0].commands.power_cycle: must not contain NUL characters",
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [(t, e) for _, t, e in LIMIT_ERRORS], ids=[i for i, _, _ in LIMIT_ERRORS]
)
def test_limits_are_refused_with_one_line(text: str, expected: str) -> None:
    assert error_of(text) == expected


def test_names_at_the_limits_are_accepted() -> None:
    parsed = lab(
        H + f"vms:\n  - {{name: {'v' * 100}, host: h1, domain: {'d' * 128}, snapshot: 'win10+sp1_x.y-z'}}\n"
    )
    assert parsed.vms[0].domain == "d" * 128 and parsed.vms[0].snapshot == "win10+sp1_x.y-z"


def test_more_than_10000_vms_are_refused() -> None:
    text = H + "vms:\n" + "".join(f"  - {{name: v{i}, host: h1, snapshot: s}}\n" for i in range(10_001))
    assert error_of(text) == "lab.yaml:5: vms: too many items: 10,001 (at most 10,000)"


@pytest.mark.parametrize("name", ["/dev/zero", "/dev/urandom"])
def test_devices_are_refused_before_reading(name: str) -> None:
    with pytest.raises(DefinitionError) as info:
        parse_lab(Path(name))
    assert str(info.value) == f"{name}: not a regular file (a device, pipe or socket)"


def test_a_lab_file_is_at_most_4_mib(tmp_path: Path) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text(GOOD + "#" * (4 * 1024 * 1024 - len(GOOD)))
    assert parse_lab(path).vms[0].name == "vm1"
    with path.open("a") as f:
        f.write("#")
    with pytest.raises(DefinitionError) as info:
        parse_lab(path)
    assert str(info.value) == f"{path}: too large: 4,194,305 bytes (at most 4,194,304)"


# ---- min_free_disk and options

OPTION_ERRORS = [
    (
        "size with a decimal unit",
        H + "    min_free_disk: 5GB\nvms: []\n",
        "lab.yaml:5: hosts[0].min_free_disk: expected a size like 5G, 500M, 1.5T or 64K (powers of 1024), "
        "or a number of bytes, got '5GB'",
    ),
    (
        "negative size",
        H + "    min_free_disk: -1\nvms: []\n",
        "lab.yaml:5: hosts[0].min_free_disk: must not be negative, got -1",
    ),
    (
        "size over 64 bits",
        H + "    min_free_disk: 99999999T\nvms: []\n",
        "lab.yaml:5: hosts[0].min_free_disk: must be at most 9223372036854775807 bytes, got '99999999T'",
    ),
    (
        "fractional number of bytes",
        H + "    min_free_disk: 1.5\nvms: []\n",
        "lab.yaml:5: hosts[0].min_free_disk: expected a size like 5G, 500M, 1.5T or 64K (powers of 1024), "
        "or a number of bytes, got 1.5",
    ),
    (
        "options not a mapping",
        H + "    options: [a]\nvms: []\n",
        "lab.yaml:5: hosts[0].options: expected a mapping, got a list",
    ),
    (
        "commands inside options",
        H + "    options:\n      commands: {power_cycle: x}\nvms: []\n",
        "lab.yaml:6: hosts[0].options.commands: commands is a key of the host itself, not an option",
    ),
    (
        "option of another backend",
        H + "    options: {snapshots: [a]}\nvms: []\n",
        "lab.yaml:5: hosts[0].options.snapshots: unknown option for a local host "
        "(allowed: agent_script, boot_timeout, spare_boots, spare_copies, timeouts)",
    ),
    (
        "spare_copies not a boolean",
        H + "    options: {spare_copies: 'no'}\nvms: []\n",
        "lab.yaml:5: hosts[0].options.spare_copies: expected true or false, got 'no'",
    ),
    (
        "zero boot timeout",
        H + "    options: {boot_timeout: 0s}\nvms: []\n",
        "lab.yaml:5: hosts[0].options.boot_timeout: must be more than 0",
    ),
    (
        "negative shutdown grace",
        "hosts:\n  - {name: k, backend: libvirt, uri: 'qemu:///system', options: {shutdown_grace: -1}}\n"
        "vms: []\n",
        "lab.yaml:2: hosts[0].options.shutdown_grace: must not be negative, got -1",
    ),
    (
        "missing agent script",
        H + "    options: {agent_script: nowhere/server.py}\nvms: []\n",
        "lab.yaml:5: hosts[0].options.agent_script: no such file: '/var/tmp/lab-dir/nowhere/server.py'",
    ),
    (
        "timeout of an unknown operation",
        H + "    options:\n      timeouts: {reboot: 5m}\nvms: []\n",
        "lab.yaml:6: hosts[0].options.timeouts.reboot: unknown operation (allowed: agent_address, "
        "create_snapshot, ensure_domain, health, list_snapshots, power_cycle, power_off, power_on, revert, "
        "state)",
    ),
    (
        "timeout of two days",
        H + "    options:\n      timeouts: {revert: 2d}\nvms: []\n",
        "lab.yaml:6: hosts[0].options.timeouts.revert: must be at most 24h, got 48h",
    ),
    (
        "libvirt host with a local option",
        "hosts:\n  - {name: k, backend: libvirt, uri: 'qemu:///system', options: {spare_copies: false}}\n"
        "vms: []\n",
        "lab.yaml:2: hosts[0].options.spare_copies: unknown option for a libvirt host "
        "(allowed: shutdown_grace, timeouts)",
    ),
    (
        "bad snapshot name of a command host",
        "hosts:\n  - name: c\n    backend: command\n    uri: command://c\n"
        "    commands: {power_on: a, power_off: b, state: c, revert: d}\n"
        "    options:\n      snapshots: [debian-12, 'win 11']\n"
        "vms: []\n",
        f"lab.yaml:7: hosts[0].options.snapshots[1]: invalid snapshot name 'win 11': {DOMAIN_RULE}",
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [(t, e) for _, t, e in OPTION_ERRORS], ids=[i for i, _, _ in OPTION_ERRORS]
)
def test_option_errors(text: str, expected: str) -> None:
    assert error_of(text, base_dir=Path("/var/tmp/lab-dir")) == expected


OPTIONS_LAB = """\
hosts:
  - name: sandbox
    backend: local
    uri: local:///var/tmp/sandbox
    min_free_disk: 5G
    options:
      spare_copies: false
      boot_timeout: 30s
      timeouts: {revert: 10m, power_on: 90s}
  - name: kvm
    backend: libvirt
    uri: qemu:///system
    min_free_disk: 1.5T
    options:
      timeouts: {revert: 1h30m}
  - name: rack
    backend: command
    uri: command://rack
    min_free_disk: 123456789
    commands: {power_on: a, power_off: b, state: c, revert: 'reinstall {domain} {snapshot}'}
    options:
      snapshots: [debian-12, win11]
      timeouts: {revert: 2h}
vms: []
"""


def test_options_and_min_free_disk_are_read_as_plain_data_and_round_trip() -> None:
    parsed = lab(OPTIONS_LAB)
    sandbox, kvm, rack = parsed.hosts
    assert sandbox.min_free_disk == 5 * 1024**3
    assert dict(sandbox.options) == {
        "spare_copies": False,
        "boot_timeout": 30.0,
        "timeouts": {"revert": 600.0, "power_on": 90.0},
    }
    assert kvm.min_free_disk == 1649267441664 and dict(kvm.options) == {"timeouts": {"revert": 5400.0}}
    assert rack.min_free_disk == 123456789
    assert dict(rack.options) == {"snapshots": ["debian-12", "win11"], "timeouts": {"revert": 7200.0}}
    assert json.loads(json.dumps(dict(rack.options))) == dict(rack.options)  # what the JSON column stores
    hash(parsed)
    dumped = dump_lab(parsed)
    assert (
        "  min_free_disk: 1.5T\n" in dumped
        and "  min_free_disk: 123456789\n" in dumped
        and "    timeouts:\n      revert: 1h30m\n" in dumped
    )
    assert parse_lab_text(dumped) == parsed
    assert lab(GOOD).hosts[0].min_free_disk is None and dict(lab(GOOD).hosts[0].options) == {}


def test_options_from_the_database_compare_equal_to_parsed_ones() -> None:
    parsed = lab(OPTIONS_LAB).hosts[2]
    stored = json.loads(json.dumps({"options": dict(parsed.options)}))["options"]
    assert dataclasses.replace(parsed, options=stored) == parsed


def test_a_backend_is_given_only_the_commands_it_runs() -> None:
    from testlab.hypervisor.command import CommandBackend
    from testlab.hypervisor.libvirt import LibvirtBackend
    from testlab.hypervisor.local import LocalBackend

    for backend in (LocalBackend, LibvirtBackend, CommandBackend):
        assert tuple(BACKEND_COMMANDS[backend.kind]) == tuple(backend.command_operations), backend.kind
    assert error_of(H + "    commands: {power_cycle: pdu cycle 3, state: virsh domstate x}\nvms: []\n") == (
        "lab.yaml:5: hosts[0].commands.state: a local host runs no state command (only power_cycle)"
    )
    assert dict(lab(H + "    commands: {power_cycle: pdu cycle 3}\nvms: []\n").hosts[0].commands) == {
        "power_cycle": "pdu cycle 3"
    }


def test_the_parser_knows_the_backends_options_and_operations() -> None:
    from testlab.hypervisor.base import OPERATIONS
    from testlab.hypervisor.command import CommandBackend
    from testlab.hypervisor.libvirt import LibvirtBackend
    from testlab.hypervisor.local import LocalBackend

    assert BACKEND_OPERATIONS == OPERATIONS
    for backend in (LocalBackend, LibvirtBackend, CommandBackend):
        assert set(HOST_OPTIONS[backend.kind]) == {*backend.option_names, "timeouts"}, backend.kind


def test_agent_script_and_shutdown_grace(tmp_path: Path) -> None:
    (tmp_path / "agent").mkdir()
    (tmp_path / "agent" / "server.py").write_text("")
    parsed = lab(
        H + "    options: {agent_script: agent/server.py}\n"
        "  - {name: k, backend: libvirt, uri: 'qemu:///system', options: {shutdown_grace: 0}}\n"
        "  - {name: k2, backend: libvirt, uri: 'qemu:///system', options: {shutdown_grace: 2m}}\nvms: []\n",
        base_dir=tmp_path,
    )
    local, libvirt, libvirt2 = parsed.hosts
    assert dict(local.options) == {"agent_script": str(tmp_path / "agent" / "server.py")}
    assert dict(libvirt.options) == {"shutdown_grace": 0.0} and dict(libvirt2.options) == {
        "shutdown_grace": 120.0
    }
    assert parse_lab_text(dump_lab(parsed)) == parsed


def test_the_command_backend_shares_the_parsers_template_rules() -> None:
    from testlab.hypervisor import open_backend
    from testlab.hypervisor.command import REQUIRED
    from testlab.hypervisor.runner import OPERATIONS, PLACEHOLDERS

    assert set(PLACEHOLDERS) == set(COMMAND_PLACEHOLDERS)
    assert OPERATIONS == COMMAND_OPERATIONS and REQUIRED == REQUIRED_COMMANDS
    commands = {"power_on": "on", "power_off": "off", "state": "st", "revert": "pxe {domain} {snapshot:.3}"}
    with pytest.raises(ValueError, match=r"placeholder \{snapshot\} takes no conversion or format"):
        open_backend("command", "rack", "command://rack", {"commands": commands})
    commands["revert"] = "ssh pxe '{domain}'"
    with pytest.raises(ValueError, match=r"placeholder \{domain\} is inside single quotes"):
        open_backend("command", "rack", "command://rack", {"commands": commands})
    commands["revert"] = 'ssh pxe "$(echo {snapshot})"'
    with pytest.raises(ValueError, match=r"placeholder \{snapshot\} is inside double quotes"):
        open_backend("command", "rack", "command://rack", {"commands": commands})


def test_a_quoted_placeholder_would_have_run_the_value(tmp_path: Path) -> None:
    """Why quoted placeholders are refused: the backend's own quoting, quoted again, comes undone."""
    import shlex

    marker = tmp_path / "ran"
    value = f"x$(touch {marker})"
    template = "echo '{domain}' > /dev/null"
    subprocess.run(["/bin/sh", "-c", template.format(domain=shlex.quote(value))], check=True)
    assert marker.exists()
    assert template_problem(template) is not None
    marker.unlink()
    unquoted = "echo {domain} > /dev/null"
    subprocess.run(["/bin/sh", "-c", unquoted.format(domain=shlex.quote(value))], check=True)
    assert not marker.exists()


def test_the_command_host_of_the_backend_docs_parses() -> None:
    docs = (EXAMPLES.parent / "docs" / "hypervisors.md").read_text()
    section = docs[docs.index("## `command`") :]
    snippet = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert snippet is not None
    (host,) = lab("hosts:\n" + textwrap.indent(snippet.group(1), "  ") + "vms: []\n").hosts
    assert host.backend == "command" and "revert" in host.commands
    assert dict(host.options) == {"snapshots": ["debian-12", "win11"], "timeouts": {"revert": 5400.0}}


# --- reuse policy (docs/lifecycle.md) ---------------------------------------------------------

REUSE_HOSTS = """\
hosts:
  - {name: h1, backend: local, uri: 'local:///var/tmp/lab'}
  - name: p1
    backend: command
    uri: pdu://rack1
    commands:
      revert: 'reinstall {domain}'
      power_on: 'on {domain}'
      power_off: 'off {domain}'
      state: 'state {domain}'
vms:
"""


def test_wipe_defaults_follow_the_backend_and_reuse_keys_are_read() -> None:
    from testlab.lifecycle import ReusePolicy

    parsed = lab(
        REUSE_HOSTS
        + "  - {name: v, host: h1, snapshot: s}\n"
        + "  - {name: m, host: p1, snapshot: s}\n"
        + "  - {name: w, host: h1, snapshot: s, wipe: reuse, max_uses: 5, wipe_after_failure: false,"
        + " protect_after: 3}\n"
    )
    assert parsed.vm("v").reuse == ReusePolicy(wipe="every-task")
    assert parsed.vm("m").reuse == ReusePolicy(wipe="reuse")
    assert parsed.vm("w").reuse == ReusePolicy(
        wipe="reuse", max_uses=5, wipe_after_failure=False, protect_after=3
    )
    assert parse_lab_text(dump_lab(parsed)) == parsed
    dumped = dump_lab(parsed)
    assert "wipe: reuse" in dumped and dumped.count("wipe:") == 1, "defaults are left out"


@pytest.mark.parametrize(
    ("vm", "expected"),
    [
        (
            "{name: v, host: h1, snapshot: s, wipe: sometimes}",
            "vms[0].wipe: expected one of every-task, reuse",
        ),
        ("{name: v, host: h1, snapshot: s, max_uses: 3}", "vms[0].max_uses: goes with 'wipe: reuse'"),
        (
            "{name: v, host: p1, snapshot: s, wipe: every-task, protect_after: 1}",
            "vms[0].protect_after: goes",
        ),
        (
            "{name: v, host: p1, snapshot: s, max_uses: 0}",
            "vms[0].max_uses: expected an integer from 1 to 2147483647, got 0",
        ),
        ("{name: v, host: p1, snapshot: s, wipe_after_failure: 1}", "vms[0].wipe_after_failure: expected"),
    ],
)
def test_reuse_errors_are_one_line(vm: str, expected: str) -> None:
    assert expected in error_of(REUSE_HOSTS + f"  - {vm}\n")
