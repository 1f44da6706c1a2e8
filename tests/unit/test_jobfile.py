"""The job-file parser: exact error messages, defaults, step order, and target resolution against a lab."""

from __future__ import annotations

import os
import pickle
import re
import textwrap
import time
from pathlib import Path

import pytest

from testlab.domain.durations import format_duration, parse_duration
from testlab.domain.errors import DefinitionError
from testlab.domain.jobfile import JobDef, StepDef, TargetVM, parse_job, parse_job_text, resolve_targets
from testlab.domain.labfile import parse_lab, parse_lab_text

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    (tmp_path / "build.sh").write_text("echo build\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "run.sh").write_text("echo test\n")
    (tmp_path / "outside.txt").write_text("secret\n")
    return tmp_path


def write_job(directory: Path, text: str) -> Path:
    path = directory / "job.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def job_error(directory: Path, text: str) -> str:
    path = write_job(directory, text)
    with pytest.raises(DefinitionError) as info:
        parse_job(path)
    message = str(info.value)
    assert "\n" not in message
    prefix = f"{path}"
    assert message.startswith(prefix)
    return "job.yaml" + message[len(prefix) :]


def test_minimal_job_has_the_defaults(job_dir: Path) -> None:
    job = parse_job(write_job(job_dir, "name: j\nsteps:\n  - name: s\n    run: make\n    vms: [v1]\n"))
    assert (job.name, job.priority, job.description) == ("j", 50, "")
    assert job.base_dir == job_dir.absolute()
    assert job.source == job_dir / "job.yaml"
    assert job.steps == (StepDef(name="s", run="make", vms=("v1",), line=3),)
    step = job.steps[0]
    assert (step.files, step.labels, step.after, step.artifacts, dict(step.env)) == ((), (), None, (), {})
    assert step.timeout == 1800.0
    hash(job)


def test_full_job_reads_every_field(job_dir: Path) -> None:
    job = parse_job(
        write_job(
            job_dir,
            """\
            name: nightly
            priority: 10
            description: |
              Builds, then tests.
            steps:
              - name: build
                run: sh build.sh
                files: [build.sh]
                vms: [builder]
                timeout: 1h30m
                artifacts: ["out/*.tar.gz", "logs/**/*.log"]
                env: {CC: gcc, _DEBUG: "1"}
              - name: test
                after: build
                run: |
                  sh tests/run.sh
                  echo done
                files: [tests/run.sh, ./build.sh]
                labels: [win10, fr]
                timeout: 600
            """,
        )
    )
    assert job.priority == 10 and job.description == "Builds, then tests.\n"
    build, test = job.steps
    assert build.timeout == 5400.0 and build.artifacts == ("out/*.tar.gz", "logs/**/*.log")
    assert dict(build.env) == {"CC": "gcc", "_DEBUG": "1"}
    assert test.after == "build" and test.labels == ("win10", "fr") and test.vms == ()
    assert test.files == ("tests/run.sh", "./build.sh")
    assert test.timeout == 600.0 and test.run == "sh tests/run.sh\necho done\n"
    assert (build.line, test.line) == (6, 13)


S = "name: j\nsteps:\n  - name: a\n    run: x\n    vms: [v]\n"  # a valid step "a" on lines 3-5

ERRORS = [
    ("missing file", None, "job.yaml: no such file"),
    ("empty", "", "job.yaml: empty file (expected a mapping with name: and steps:)"),
    (
        "top list",
        "- a\n",
        "job.yaml:1: expected a mapping with name: and steps: at the top level, got a list",
    ),
    (
        "bad yaml",
        "name: j\nsteps: [\n  - a: b: c\n",
        "job.yaml:3: invalid YAML: expected the node content, but found '-' (while parsing a flow node)",
    ),
    (
        "colon in value",
        "name: j\nsteps:\n  - name: a\n    run: echo a: b\n",
        "job.yaml:4: invalid YAML: mapping values are not allowed here",
    ),
    (
        "unknown top key",
        S + "owner: me\n",
        "job.yaml:6: owner: unknown key (allowed: description, name, notify, priority, reference, steps)",
    ),
    ("missing name", "steps: []\n", "job.yaml:1: name: missing required key"),
    ("missing steps", "name: j\n", "job.yaml:1: steps: missing required key"),
    ("empty steps", "name: j\nsteps: []\n", "job.yaml:2: steps: must not be an empty list"),
    ("name type", "name: [j]\nsteps: []\n", "job.yaml:1: name: expected a string, got a list"),
    ("priority type", S + "priority: high\n", "job.yaml:6: priority: expected an integer, got 'high'"),
    (
        "step not mapping",
        "name: j\nsteps:\n  - build\n",
        "job.yaml:3: steps[0]: expected a mapping, got 'build'",
    ),
    (
        "step unknown key",
        S + "    retries: 3\n",
        "job.yaml:6: steps[0].retries: unknown key (allowed: after, artifacts, clean, count, env, files, "
        "labels, name, prepare, reports, run, timeout, vms)",
    ),
    (
        "step missing run",
        "name: j\nsteps:\n  - name: a\n    vms: [v]\n",
        "job.yaml:3: steps[0].run: missing required key",
    ),
    (
        "step name charset",
        "name: j\nsteps:\n  - name: a b\n    run: x\n    vms: [v]\n",
        "job.yaml:3: steps[0].name: invalid name 'a b': use letters, digits, '.', '_' and '-', "
        "starting with a letter "
        "or digit",
    ),
    (
        "empty run",
        "name: j\nsteps:\n  - name: a\n    run: '  '\n    vms: [v]\n",
        "job.yaml:4: steps[0].run: must not be empty",
    ),
    (
        "duplicate step",
        S + "  - name: a\n    run: y\n    vms: [v]\n",
        "job.yaml:6: steps[1].name: duplicate step name 'a' (first on line 3)",
    ),
    (
        "both vms and labels",
        S + "    labels: [x]\n",
        "job.yaml:6: steps[0].labels: give either vms or labels, not both",
    ),
    (
        "neither vms nor labels",
        "name: j\nsteps:\n  - name: a\n    run: x\n",
        "job.yaml:3: steps[0]: missing 'vms' or 'labels' (say where the step runs)",
    ),
    (
        "empty vms",
        "name: j\nsteps:\n  - name: a\n    run: x\n    vms: []\n",
        "job.yaml:5: steps[0].vms: must not be an empty list",
    ),
    (
        "labels not list",
        "name: j\nsteps:\n  - name: a\n    run: x\n    labels: win10\n",
        "job.yaml:5: steps[0].labels: expected a list, got 'win10'",
    ),
    (
        "duplicate vm",
        "name: j\nsteps:\n  - name: a\n    run: x\n    vms:\n      - v\n      - v\n",
        "job.yaml:7: steps[0].vms[1]: duplicate 'v' (first on line 6)",
    ),
    (
        "timeout text",
        S + "    timeout: abc\n",
        "job.yaml:6: steps[0].timeout: expected a duration like 90s, 30m, 2h or 1h30m (or a number "
        "of seconds), got 'abc'",
    ),
    (
        "timeout list",
        S + "    timeout: [1]\n",
        "job.yaml:6: steps[0].timeout: expected a duration like 90s, 30m, 2h or 1h30m (or a number "
        "of seconds), got a list",
    ),
    (
        "timeout zero",
        S + "    timeout: 0s\n",
        "job.yaml:6: steps[0].timeout: must be more than 0 and at most 24h, got 0s",
    ),
    (
        "timeout long",
        S + "    timeout: 1d1s\n",
        "job.yaml:6: steps[0].timeout: must be more than 0 and at most 24h, got 24h1s",
    ),
    ("after self", S + "    after: a\n", "job.yaml:6: steps[0].after: a step cannot run after itself"),
    (
        "after unknown",
        S + "  - name: b\n    run: y\n    vms: [v]\n    after: c\n",
        "job.yaml:9: steps[1].after: unknown step 'c' (steps: a, b)",
    ),
    (
        "cycle of two",
        "name: j\nsteps:\n  - {name: a, run: x, vms: [v], after: b}\n  - {name: b, run: x, vms: "
        "[v], after: a}\n",
        "job.yaml:3: steps[0].after: dependency cycle: a -> b -> a",
    ),
    (
        "cycle of three",
        "name: j\nsteps:\n  - {name: z, run: x, vms: [v]}\n  - {name: a, run: x, vms: [v], after: c}\n"
        "  - {name: b, run: x, vms: [v], after: a}\n  - {name: c, run: x, vms: [v], after: b}\n",
        "job.yaml:4: steps[1].after: dependency cycle: a -> c -> b -> a",
    ),
    ("file missing", S + "    files: [nope.sh]\n", "job.yaml:6: steps[0].files[0]: no such file: 'nope.sh'"),
    (
        "file absolute",
        S + "    files: [/etc/passwd]\n",
        "job.yaml:6: steps[0].files[0]: must be relative to the job file's directory, got '/etc/passwd'",
    ),
    (
        "file escape",
        S + "    files: [tests/../../x]\n",
        "job.yaml:6: steps[0].files[0]: must stay inside the job file's directory (no '..'), got "
        "'tests/../../x'",
    ),
    (
        "file directory",
        S + "    files:\n      - build.sh\n      - tests\n",
        "job.yaml:8: steps[0].files[1]: 'tests' is a directory; list files only",
    ),
    (
        "file not string",
        S + "    files: [{a: b}]\n",
        "job.yaml:6: steps[0].files[0]: expected a string, got a mapping",
    ),
    (
        "artifact absolute",
        S + "    artifacts: [/var/log/*]\n",
        "job.yaml:6: steps[0].artifacts[0]: must be relative to the task's work directory, got '/var/log/*'",
    ),
    (
        "artifact escape",
        S + "    artifacts: ['logs/../../*']\n",
        "job.yaml:6: steps[0].artifacts[0]: must stay inside the task's work directory (no '..'), "
        "got 'logs/../../*'",
    ),
    ("env not mapping", S + "    env: [A=1]\n", "job.yaml:6: steps[0].env: expected a mapping, got a list"),
    (
        "env bad name",
        S + "    env:\n      1ABC: x\n",
        "job.yaml:7: steps[0].env.1ABC: invalid name '1ABC': use letters, digits and '_', not "
        "starting with a digit",
    ),
    (
        "env number value",
        S + "    env:\n      LEVEL: 3\n",
        "job.yaml:7: steps[0].env.LEVEL: expected a string, got integer 3 (quote it to make it a string)",
    ),
    (
        "duplicate env",
        S + "    env:\n      A: x\n      A: y\n",
        "job.yaml:8: duplicate key 'A' (first on line 7)",
    ),
]


@pytest.mark.parametrize(("text", "expected"), [(t, e) for _, t, e in ERRORS], ids=[i for i, _, _ in ERRORS])
def test_errors_are_precise_one_line_messages(job_dir: Path, text: str | None, expected: str) -> None:
    if text is None:
        with pytest.raises(DefinitionError) as info:
            parse_job(job_dir / "job.yaml")
        assert str(info.value) == f"{job_dir / 'job.yaml'}: no such file"
        return
    assert job_error(job_dir, text) == expected


def test_symlink_leading_outside_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("x")
    inside = tmp_path / "job"
    inside.mkdir()
    os.symlink(tmp_path / "secret", inside / "link")
    assert (
        job_error(inside, S + "    files: [link]\n")
        == "job.yaml:6: steps[0].files[0]: 'link' leads outside the job file's directory (symbolic link)"
    )


def test_relative_source_is_kept_for_messages(job_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_job(job_dir, S + "    timeout: x\n")
    monkeypatch.chdir(job_dir)
    with pytest.raises(DefinitionError) as info:
        parse_job(Path("job.yaml"))
    assert str(info.value).startswith("job.yaml:6: steps[0].timeout: ")
    assert (info.value.source, info.value.line, info.value.field) == ("job.yaml", 6, "steps[0].timeout")


def _job(*steps: tuple[str, str | None]) -> JobDef:
    return JobDef(
        name="j",
        priority=50,
        description="",
        steps=tuple(StepDef(name=n, run="x", vms=("v",), after=a, line=None) for n, a in steps),
        source=Path("job.yaml"),
        base_dir=Path("/"),
    )


@pytest.mark.parametrize(
    ("steps", "order"),
    [
        ([("a", None), ("b", None), ("c", None)], "abc"),
        ([("a", "b"), ("b", None)], "ba"),
        (
            [("test", "build"), ("package", "test"), ("build", None), ("lint", None)],
            ["build", "test", "package", "lint"],
        ),
        ([("c", "a"), ("b", "a"), ("a", None), ("d", "c")], "acbd"),
        ([("x", None), ("b", "a"), ("a", None)], "xab"),
        ([("x", None), ("a", "b"), ("b", "a")], "xab"),  # hand-built cycle: nothing is dropped
    ],
)
def test_ordered_steps_puts_dependencies_first_and_is_stable(steps: list, order: str | list[str]) -> None:
    assert [s.name for s in _job(*steps).ordered_steps()] == list(order)


def test_ordered_steps_of_a_parsed_job(job_dir: Path) -> None:
    job = parse_job(
        write_job(
            job_dir,
            "name: j\nsteps:\n  - {name: report, run: x, vms: [v], after: test}\n"
            "  - {name: test, run: x, vms: [v], after: build}\n  - {name: build, run: x, vms: [v]}\n",
        )
    )
    assert [s.name for s in job.ordered_steps()] == ["build", "test", "report"]


LAB = [
    TargetVM("win10", "base", frozenset({"win10", "en"}), True),
    TargetVM("win10-fr", "base", frozenset({"win10", "fr"}), True),
    TargetVM("win10-fr2", "base", frozenset({"win10", "fr"}), True),
    TargetVM("win10-ja", "extra", frozenset({"win10", "ja"}), True),
    TargetVM("win10-old", "retired", frozenset({"win10", "fr"}), False),
    TargetVM("win10-gone", "deleted", frozenset({"win10"}), False),
    TargetVM("win10-off", "base", frozenset({"win10", "fr"}), False),
]


def _targets(job_dir: Path, text: str) -> dict[str, tuple[str, ...]]:
    return resolve_targets(parse_job(write_job(job_dir, text)), LAB)


def test_labels_pick_enabled_base_vms_with_all_labels_sorted(job_dir: Path) -> None:
    text = (
        "name: j\nsteps:\n  - {name: fr, run: x, labels: [fr, win10]}\n  - {name: all, run: x, "
        "labels: [win10]}\n"
        "  - {name: named, run: x, vms: [win10-ja, win10]}\n"
    )
    assert _targets(job_dir, text) == {
        "fr": ("win10-fr", "win10-fr2"),
        "all": ("win10", "win10-fr", "win10-fr2"),
        "named": ("win10-ja", "win10"),
    }


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (
            "    labels: [win10, de]\n",
            "job.yaml:5: steps[0].labels: no enabled base VM has all of the labels [win10, de]",
        ),
        ("    labels: [ja]\n", "job.yaml:5: steps[0].labels: no enabled base VM has all of the labels [ja]"),
        ("    vms: [win10, nope]\n", "job.yaml:5: steps[0].vms[1]: unknown VM 'nope'"),
        (
            "    vms:\n      - win10\n      - win10-old\n",
            "job.yaml:7: steps[0].vms[1]: VM 'win10-old' is retired",
        ),
        ("    vms: [win10-gone]\n", "job.yaml:5: steps[0].vms[0]: VM 'win10-gone' is deleted"),
        ("    vms: [win10-off]\n", "job.yaml:5: steps[0].vms[0]: VM 'win10-off' is disabled"),
    ],
)
def test_resolve_targets_errors(job_dir: Path, step: str, expected: str) -> None:
    job = parse_job(write_job(job_dir, "name: j\nsteps:\n  - name: a\n    run: x\n" + step))
    with pytest.raises(DefinitionError) as info:
        resolve_targets(job, LAB)
    assert str(info.value) == expected.replace("job.yaml", str(job_dir / "job.yaml"), 1)


@pytest.mark.parametrize("name", ["job.yaml", "failing-job.yaml"])
def test_example_jobs_parse_and_resolve_against_the_example_lab(name: str) -> None:
    lab = parse_lab(EXAMPLES / "lab.yaml")
    job = parse_job(EXAMPLES / name)
    vms = [TargetVM(v.name, v.role, frozenset(v.labels), v.role in ("base", "extra")) for v in lab.vms]
    targets = resolve_targets(job, vms)
    assert set(targets) == {s.name for s in job.steps}
    assert all(targets.values())
    for step in job.steps:
        assert all((EXAMPLES / f).is_file() for f in step.files)
        assert step.run.split()[-1] in step.run  # a command is given
    assert [s.name for s in job.ordered_steps()] == ["build", "test"]


def test_example_job_targets() -> None:
    lab = parse_lab(EXAMPLES / "lab.yaml")
    vms = [TargetVM(v.name, v.role, frozenset(v.labels), v.role in ("base", "extra")) for v in lab.vms]
    assert resolve_targets(parse_job(EXAMPLES / "job.yaml"), vms) == {
        "build": ("build",),
        "test": ("linux-en", "linux-fr"),
    }


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        (
            {"source": "job.yaml", "line": 12, "field": "steps[1].timeout"},
            "job.yaml:12: steps[1].timeout: bad",
        ),
        ({"source": "job.yaml", "field": "name"}, "job.yaml: name: bad"),
        ({"source": "job.yaml"}, "job.yaml: bad"),
        ({"line": 3}, "line 3: bad"),
        ({"field": "steps"}, "steps: bad"),
        ({}, "bad"),
        # Always one line: control characters from a file name or a key are escaped.
        ({"source": "a\nb.yaml", "line": 2, "field": "k\x00\u2028"}, "a\\nb.yaml:2: k\\x00\\u2028: bad"),
    ],
)
def test_definition_error_leaves_out_unknown_parts(kwargs: dict, text: str) -> None:
    error = DefinitionError("bad", **kwargs)
    assert str(error) == text
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.source, copy.line, copy.field) == (text, error.source, error.line, error.field)


def test_text_without_a_file_checks_files_against_base_dir(job_dir: Path) -> None:
    text = "name: j\nsteps:\n  - {name: a, run: x, vms: [v], files: [build.sh]}\n"
    assert parse_job_text(text, base_dir=job_dir).steps[0].files == ("build.sh",)
    with pytest.raises(DefinitionError) as info:
        parse_job_text(text.replace("build.sh", "gone.sh"), source="<upload>", base_dir=job_dir)
    assert str(info.value) == "<upload>:3: steps[0].files[0]: no such file: 'gone.sh'"


def test_the_examples_in_the_documentation_parse(tmp_path: Path) -> None:
    for relative in ("secrets/agent-token", "files/build.sh", "files/run-tests.sh"):
        (tmp_path / relative).parent.mkdir(exist_ok=True)
        (tmp_path / relative).write_text("x")
    docs = (EXAMPLES.parent / "docs" / "files.md").read_text()
    lab_text, job_text = re.findall(r"```yaml\n(.*?)```", docs, re.S)
    lab = parse_lab_text(lab_text, base_dir=tmp_path)
    job = parse_job_text(job_text, base_dir=tmp_path)
    vms = [TargetVM(v.name, v.role, frozenset(v.labels), True) for v in lab.vms]
    vms.append(TargetVM("build", "base", frozenset(), True))
    assert resolve_targets(job, vms) == {"build": ("build",), "test": ("win10", "win10-fr")}


# ---- limits (docs/files.md, "Limits"): each refused with one line naming the field

LIMIT_ERRORS = [
    (
        "priority over 32 bits",
        S + "priority: 99999999999999999999999999\n",
        "job.yaml:6: priority: expected an integer from -2147483648 to 2147483647, "
        "got 99999999999999999999999999",
    ),
    (
        "priority under 32 bits",
        S + "priority: -2147483649\n",
        "job.yaml:6: priority: expected an integer from -2147483648 to 2147483647, got -2147483649",
    ),
    (
        "number of 5,000 digits",
        S + "priority: " + "9" * 5000 + "\n",
        "job.yaml:6: number too long: 5,000 characters (at most 100)",
    ),
    ("NUL in the name", 'name: "a\\0b"\nsteps: []\n', "job.yaml:1: name: must not contain NUL characters"),
    (
        "carriage return in the name",
        'name: "build\\rtest"\nsteps: []\n',
        "job.yaml:1: name: must be a single line, got 'build\\rtest'",
    ),
    (
        "line separator in the name",
        'name: "build\\Ltest"\nsteps: []\n',
        "job.yaml:1: name: must be a single line, got 'build\\u2028test'",
    ),
    (
        "escape character in the name",
        'name: "build\\etest"\nsteps: []\n',
        "job.yaml:1: name: must not contain control characters ('\\x1b'), got 'build\\x1btest'",
    ),
    (
        "name longer than its column",
        f"name: {'n' * 201}\nsteps: []\n",
        "job.yaml:1: name: too long: 201 characters (at most 200)",
    ),
    (
        "description of 16 KiB and one character",
        S + f"description: {'d' * (16 * 1024 + 1)}\n",
        "job.yaml:6: description: too long: 16,385 characters (at most 16,384)",
    ),
    (
        "NUL in the description",
        S + 'description: "a\\0"\n',
        "job.yaml:6: description: must not contain NUL characters",
    ),
    (
        "NUL in run",
        'name: j\nsteps:\n  - {name: a, run: "x\\0", vms: [v]}\n',
        "job.yaml:3: steps[0].run: must not contain NUL characters",
    ),
    (
        "run too long",
        f"name: j\nsteps:\n  - {{name: a, vms: [v], run: {'x' * (16 * 1024 + 1)}}}\n",
        "job.yaml:3: steps[0].run: too long: 16,385 characters (at most 16,384)",
    ),
    (
        "NUL in an env value",
        S + '    env: {A: "x\\0"}\n',
        "job.yaml:6: steps[0].env.A: must not contain NUL characters",
    ),
    (
        "environment too large",
        S + "    env: {" + ", ".join(f"V{i}: {'x' * 9000}" for i in range(4)) + "}\n",
        "job.yaml:6: steps[0].env: too large: 36,008 characters of names and values (at most 32,768)",
    ),
    (
        "step name longer than its column",
        f"name: j\nsteps:\n  - {{name: {'s' * 101}, run: x, vms: [v]}}\n",
        "job.yaml:3: steps[0].name: too long: 101 characters (at most 100)",
    ),
    (
        "1,001 steps",
        "name: j\nsteps:\n" + "".join(f"  - {{name: s{i}, run: x, vms: [v]}}\n" for i in range(1001)),
        "job.yaml:2: steps: too many items: 1,001 (at most 1,000)",
    ),
    (
        "101 labels",
        "name: j\nsteps:\n  - {name: a, run: x, labels: [" + ", ".join(f"l{i}" for i in range(101)) + "]}\n",
        "job.yaml:3: steps[0].labels: too many items: 101 (at most 100)",
    ),
    (
        "101 artifact patterns",
        S + "    artifacts: [" + ", ".join(f"out/{i}" for i in range(101)) + "]\n",
        "job.yaml:6: steps[0].artifacts: too many items: 101 (at most 100)",
    ),
    (
        "1,001 files",
        S + "    files: [" + ", ".join(f"f{i}" for i in range(1001)) + "]\n",
        "job.yaml:6: steps[0].files: too many items: 1,001 (at most 1,000)",
    ),
    (
        "NUL in a file name",
        S + '    files: ["build.sh\\0"]\n',
        "job.yaml:6: steps[0].files[0]: must not contain NUL characters",
    ),
    (
        "newline in an artifact pattern",
        S + '    artifacts: ["out/*\\n"]\n',
        "job.yaml:6: steps[0].artifacts[0]: must be a single line, got 'out/*\\n'",
    ),
    (
        "timeout of 400 digits",
        S + "    timeout: " + "9" * 400 + "\n",
        "job.yaml:6: number too long: 400 characters (at most 100)",
    ),
    (
        "timeout of 99 digits",
        S + "    timeout: " + "9" * 99 + "\n",
        "job.yaml:6: steps[0].timeout: must be more than 0 and at most 24h, got "
        + format_duration(float("9" * 99)),
    ),
    (
        "deep nesting",
        "name: j\nsteps: " + "[" * 100_000 + "]" * 100_000 + "\n",
        "job.yaml:2: nested too deeply (at most 32 levels of mappings and lists)",
    ),
    (
        "key with a newline",
        S + '"own\\ner": me\n',
        "job.yaml:6: 'own\\ner': unknown key "
        "(allowed: description, name, notify, priority, reference, steps)",
    ),
    (
        "key of 10,000 characters",
        S + "? " + "k" * 10_000 + "\n: me\n",
        "job.yaml:6: 'kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk… (10,000 characters): "
        "unknown key (allowed: description, name, notify, priority, reference, steps)",
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [(t, e) for _, t, e in LIMIT_ERRORS], ids=[i for i, _, _ in LIMIT_ERRORS]
)
def test_limits_are_refused_with_one_line(job_dir: Path, text: str, expected: str) -> None:
    assert job_error(job_dir, text) == expected


def test_values_at_the_limits_are_accepted(job_dir: Path) -> None:
    text = (
        f"name: {'n' * 200}\npriority: -2147483648\ndescription: {'d' * 16 * 1024}\nsteps:\n"
        + "".join(f"  - {{name: s{i}, run: x, vms: [v]}}\n" for i in range(999))
        + f"  - name: {'s' * 100}\n    run: {'x' * 16 * 1024}\n    timeout: 24h\n"
        + "    labels: ["
        + ", ".join(f"l{i}" for i in range(100))
        + "]\n"
        + "    env: {"
        + ", ".join(f"V{i}: {'x' * 8000}" for i in range(4))
        + "}\n"
    )
    job = parse_job(write_job(job_dir, text))
    assert len(job.steps) == 1000 and job.priority == -(2**31)
    assert sum(len(k) + len(v) for k, v in job.steps[-1].env.items()) == 32_008


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: Path("/dev/zero"), "/dev/zero: not a regular file (a device, pipe or socket)"),
        (lambda d: Path("/dev/urandom"), "/dev/urandom: not a regular file (a device, pipe or socket)"),
        (lambda d: _fifo(d / "fifo.yaml"), "{dir}/fifo.yaml: not a regular file (a device, pipe or socket)"),
        (lambda d: d, "{dir}: is a directory, not a file"),
        (
            lambda d: _sized(d / "big.yaml", 1024 * 1024 + 1),
            "{dir}/big.yaml: too large: 1,048,577 bytes (at most 1,048,576)",
        ),
    ],
    ids=["/dev/zero", "/dev/urandom", "fifo", "directory", "over 1 MiB"],
)
def test_only_regular_files_of_at_most_1_mib_are_read(job_dir: Path, make, message: str) -> None:
    started = time.monotonic()
    with pytest.raises(DefinitionError) as info:
        parse_job(make(job_dir))
    assert str(info.value) == message.format(dir=job_dir)
    assert time.monotonic() - started < 2


def test_text_is_held_to_the_file_size_limit() -> None:
    with pytest.raises(DefinitionError, match=r"^<api>: too large: 2,097,152 bytes \(at most 1,048,576\)$"):
        parse_job_text("#" * 2 * 1024 * 1024, source="<api>")


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _sized(path: Path, size: int) -> Path:
    path.write_text(S + "#" * (size - len(S)))
    return path


def test_a_job_of_more_than_10000_tasks_is_refused_at_the_step_that_crosses_the_limit(job_dir: Path) -> None:
    lab = [TargetVM(f"vm{i}", "base", frozenset({"x"}), True) for i in range(11)]
    steps = "".join(f"  - {{name: s{i}, run: x, labels: [x]}}\n" for i in range(1000))
    job = parse_job(write_job(job_dir, "name: j\nsteps:\n" + steps))
    with pytest.raises(DefinitionError) as info:
        resolve_targets(job, lab)
    # 909 steps of 11 tasks are 9,999 tasks; the 910th step (index 909, line 912) crosses 10,000.
    assert str(info.value) == (
        f"{job_dir / 'job.yaml'}:912: steps[909].labels: the job would have more than 10,000 tasks "
        "(10,010 up to this step, 11 of them here)"
    )
    assert len(resolve_targets(job, lab[:10])) == 1000  # exactly 10,000 tasks


@pytest.mark.parametrize("value", [10**400, "9" * 350, "9" * 340 + "d"])
def test_durations_too_large_for_a_float_are_refused_not_raised(value: object) -> None:
    with pytest.raises(ValueError, match="^too large: "):
        parse_duration(value)  # type: ignore[arg-type]


def test_reports_reference_and_notify_are_read(tmp_path):
    (tmp_path / "job.yaml").write_text(
        "name: nightly\nreference: true\n"
        "notify: {email: [dev@lab.test], webhooks: [ci], when: always}\n"
        "steps:\n  - {name: t, vms: [a], run: 'true', reports: [results/*.xml]}\n"
    )
    job = parse_job(tmp_path / "job.yaml")
    assert job.reference is True
    assert job.notify.as_dict() == {"email": ["dev@lab.test"], "webhooks": ["ci"], "when": "always"}
    assert job.steps[0].reports == ("results/*.xml",)


@pytest.mark.parametrize(
    "extra, message",
    [
        ("reference: 'true'\n", "reference: expected true or false, got"),
        ("notify: {when: always}\n", "notify: name at least one e-mail address or webhook"),
        ("notify: {email: [nobody]}\n", "notify.email[0]: expected an address like name@domain"),
        ("notify: {email: [a@b], when: sometimes}\n", "notify.when:"),
        ("notify: {email: [a@b], to: [x]}\n", "notify.to: unknown key"),
    ],
)
def test_bad_notify_and_reference_are_refused(tmp_path, extra, message):
    (tmp_path / "job.yaml").write_text("name: j\n" + extra + "steps:\n  - {name: t, vms: [a], run: 'true'}\n")
    with pytest.raises(DefinitionError) as info:
        parse_job(tmp_path / "job.yaml")
    assert message in str(info.value), str(info.value)


def test_prepare_and_clean_steps() -> None:
    text = S + "    prepare: true\n  - name: b\n    run: y\n    vms: [v]\n    after: a\n    clean: true\n"
    job = parse_job_text(text, source="job.yaml")
    assert (job.step("a").prepare, job.step("a").clean) == (True, False)
    assert (job.step("b").prepare, job.step("b").clean) == (False, True)
    with pytest.raises(DefinitionError, match=r"^job.yaml:6: steps\[0\].clean: expected true or false"):
        parse_job_text(S + "    clean: yes please\n", source="job.yaml")
