"""Finding a task's reports and telling their format: what is never silently ignored."""

from __future__ import annotations

import os

import pytest

from testlab.results import (
    CaseStatus,
    Limits,
    ProblemKind,
    ReportProblem,
    collect_reports,
    detect_format,
    partition,
    read_report,
)
from testlab.results.source import BudgetedReader, OverBudget

JUNIT = (
    '<testsuite name="s"><testcase name="a"/><testcase name="b"><failure message="m"/></testcase></testsuite>'
)
TAP = "1..2\nok 1 - a\nnot ok 2 - b\n"


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b'<?xml version="1.0"?><testsuites/>', "junit"),
        (b"\xef\xbb\xbf\n  <testsuite>", "junit"),
        ("<testsuite/>".encode("utf-16"), "junit"),
        (b"<html>", "junit"),  # XML: its root is checked while it is read
        (b"TAP version 13\n1..1\n", "tap"),
        (b"1..3\nok 1\n", "tap"),
        (b"ok 1 - a\n", "tap"),
        (b"not ok 1\n", "tap"),
        (b"# starting\n\n# more\nok 1\n", "tap"),
        (b"Bail out! no disk\n", "tap"),
        (b"# only comments so far\n", "tap"),
        (b"TAP version 12\n", "tap"),
        (b"ok 1 caf\xe9\n", "tap"),  # a stray byte is the TAP reader's to report
        (b"hello world\n", None),
        (b'{"tests": []}', None),
        (b"\x7fELF\x02\x01\x01\x00\x00\x00", None),
        (b"\x89PNG\r\n\x1a\n\x00\x00", None),
    ],
)
def test_detect_format_by_content(head, expected):
    assert detect_format(head) == expected


def test_the_extension_does_not_decide(reports):
    cases, problems = reports.read("results.txt", JUNIT)
    assert problems == [] and [c.status for c in cases] == [CaseStatus.PASSED, CaseStatus.FAILED]
    cases, problems = reports.read("results.xml", TAP)
    assert problems == [] and [c.status for c in cases] == [CaseStatus.PASSED, CaseStatus.FAILED]


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "the file is empty"), (b"\n  \n\t", "only blanks"), (b"\xef\xbb\xbf\n", "only blanks")],
)
def test_an_empty_file(reports, content, message):
    assert reports.read("r.xml", content) == ([], [ReportProblem("r.xml", ProblemKind.EMPTY, message)])


def test_binary_garbage_is_unreadable(reports):
    cases, problems = reports.read("r.xml", bytes(range(256)) * 64)
    assert cases == []
    assert [(p.kind, p.message) for p in problems] == [
        (ProblemKind.UNREADABLE, "binary data, neither JUnit XML nor TAP")
    ]


def test_text_that_is_no_report_is_unreadable(reports):
    _, problems = reports.read("r.xml", "Segmentation fault (core dumped)\n")
    assert [(p.kind, p.message) for p in problems] == [
        (
            ProblemKind.UNREADABLE,
            "neither JUnit XML nor TAP (it starts with 'Segmentation fault (core dumped)')",
        )
    ]


def test_a_missing_file(tmp_path):
    assert list(read_report(tmp_path / "gone.xml")) == [
        ReportProblem("gone.xml", ProblemKind.MISSING, "no such file")
    ]


def test_a_directory_or_fifo_is_not_a_report(tmp_path):
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "fifo")  # opening it would wait for a writer forever
    for name in ("dir", "fifo"):
        assert list(read_report(tmp_path / name)) == [
            ReportProblem(name, ProblemKind.UNREADABLE, "not a regular file")
        ]


def test_a_file_without_permission_is_unreadable(reports, monkeypatch):
    path = reports.write("r.xml", JUNIT)

    def refuse(self, *args, **kwargs):  # as chmod 0 would, for anyone but root
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(type(path), "open", refuse)
    assert list(read_report(path)) == [
        ReportProblem("r.xml", ProblemKind.UNREADABLE, "cannot read: Permission denied")
    ]


def test_a_file_over_the_size_limit_is_not_read(reports):
    cases, problems = reports.read("big.xml", JUNIT + " " * 3 * 2**20, Limits(max_bytes=2 * 2**20))
    assert cases == []
    assert [(p.kind, p.message) for p in problems] == [
        (ProblemKind.TOO_LARGE, "3.0 MiB is over the 2 MiB limit for a report; not read")
    ]


def test_the_budget_holds_while_reading(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x\n" * 100)
    with path.open("rb") as raw:
        reader = BudgetedReader(raw, 150)
        assert reader.read(100) == b"x\n" * 50
        with pytest.raises(OverBudget):
            reader.read(100)
    with path.open("rb") as raw:
        reader = BudgetedReader(raw, 200)
        assert len(reader.read()) == 200 and not reader.at_eof
        assert reader.read(10) == b"" and reader.at_eof


def make_tree(root):
    files = {
        "results/unit.xml": JUNIT,
        "results/sub/more.xml": JUNIT.replace('name="s"', 'name="more"'),
        "results/a.tap": TAP,
        "logs/build.log": "not a report",
    }
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)


def test_collect_reports_in_pattern_then_name_order(tmp_path):
    make_tree(tmp_path)
    cases, problems = partition(
        collect_reports(tmp_path, ["results/**/*.xml", "results/a.tap", "results/*.xml", "junit/*.xml"])
    )
    assert [(c.suite, c.name) for c in cases] == [
        ("more", "a"),
        ("more", "b"),
        ("s", "a"),
        ("s", "b"),
        ("results/a.tap", "a"),  # a TAP case's suite is the report's name in the work directory
        ("results/a.tap", "b"),
    ]  # results/unit.xml, matched twice, is read once
    assert problems == [
        ReportProblem("junit/*.xml", ProblemKind.MISSING, "no file matches this report pattern")
    ]


def test_collect_reports_names_problems_by_relative_path(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "cut.xml").write_text("<testsuites><testsuite>")
    (tmp_path / "out" / "dir.xml").mkdir()  # a directory is not a match
    _, problems = partition(collect_reports(tmp_path, ["out/*.xml", "out/dir.xml"]))
    assert [(p.file, p.kind) for p in problems] == [
        ("out/cut.xml", ProblemKind.TRUNCATED),
        ("out/dir.xml", ProblemKind.MISSING),
    ]


def test_collect_reports_refuses_links_leading_outside(tmp_path):
    outside = tmp_path / "outside.xml"
    outside.write_text(JUNIT)
    root = tmp_path / "work"
    root.mkdir()
    (root / "r.xml").symlink_to(outside)
    assert list(collect_reports(root, ["*.xml"])) == [
        ReportProblem("r.xml", ProblemKind.UNREADABLE, "a link leading outside the work directory")
    ]


@pytest.mark.parametrize("pattern", ["/etc/*.xml", "../x.xml", "a/../../x.xml", ""])
def test_collect_reports_takes_only_relative_patterns(tmp_path, pattern):
    with pytest.raises(ValueError, match="must be relative"):
        list(collect_reports(tmp_path, [pattern]))


def test_problems_read_as_one_line():
    problem = ReportProblem("results/unit.xml", ProblemKind.TRUNCATED, "the XML ends early (line 3)")
    assert str(problem) == "results/unit.xml: truncated: the XML ends early (line 3)"
    with pytest.raises(ValueError):
        ReportProblem("f", "lost", "no such kind")
