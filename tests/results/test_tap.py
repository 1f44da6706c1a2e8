"""TAP reports: results, directives, diagnostics, plans, and streams that were cut."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from testlab.results import CaseStatus, Limits, ProblemKind, TestCase, partition, read_report

P, F, S, E = CaseStatus.PASSED, CaseStatus.FAILED, CaseStatus.SKIPPED, CaseStatus.ERROR


def statuses(cases):
    return [(c.name, c.status, c.message) for c in cases]


def test_plan_first_with_directives_and_diagnostics(reports):
    cases, problems = reports.read(
        "unit.tap",
        """TAP version 13
1..6
ok 1 - parses an empty file
# a passing test's chatter is not kept
not ok 2 - parses quotes
# got: 'a'
# expected: 'b'
ok 3 - unicode # SKIP needs a UTF-8 console
not ok 4 - locale # TODO not written yet
ok 5 - dates # TODO fixed already
not ok 6
  ---
  message: exit status 3
  severity: fail
  ...
""",
    )
    assert problems == []
    assert statuses(cases) == [
        ("parses an empty file", P, ""),
        ("parses quotes", F, "got: 'a'\nexpected: 'b'"),
        ("unicode", S, "needs a UTF-8 console"),
        ("locale", S, "TODO: not written yet"),  # a known failure does not fail the run
        ("dates", P, ""),
        ("test 6", F, "---\n  message: exit status 3\n  severity: fail\n  ..."),
    ]
    assert {c.suite for c in cases} == {"unit.tap"}
    assert all(c.duration is None for c in cases)


def test_plan_last_without_numbers(reports):
    cases, problems = reports.read("t.tap", "ok - first\nok\nnot ok - third # broken\n1..3\n")
    assert problems == []
    assert statuses(cases) == [("first", P, ""), ("test 2", P, ""), ("third", F, "broken")]


def test_a_byte_order_mark_is_no_part_of_the_first_line(reports):
    cases, problems = reports.read("t.tap", b"\xef\xbb\xbfok 1 - a\n1..1\n")
    assert problems == [] and statuses(cases) == [("a", P, "")]


def test_a_bail_out_is_an_error_and_explains_the_missing_tests(reports):
    cases, problems = reports.read(
        "t.tap", "1..10\nok 1 - a\nnot ok 2 - b\nBail out! database unreachable\nok 3 - never read\n"
    )
    assert statuses(cases) == [("a", P, ""), ("b", F, ""), ("Bail out!", E, "database unreachable")]
    assert problems == []


def test_a_stream_with_fewer_tests_than_its_plan_is_truncated(reports):
    cases, problems = reports.read("t.tap", "1..10\nok 1\nok 2\nnot ok 3\nok 4\n")
    assert len(cases) == 4
    assert [(p.file, p.kind, p.message) for p in problems] == [
        ("t.tap", ProblemKind.TRUNCATED, "the plan is 1..10 but only 4 tests were seen")
    ]


def test_a_stream_without_a_plan_is_truncated(reports):
    cases, problems = reports.read("t.tap", "ok 1\nok 2\nnot o")
    assert len(cases) == 2
    assert [(p.kind, p.message) for p in problems] == [
        (ProblemKind.TRUNCATED, "no plan (1..N) after 2 tests: the stream was cut before its end")
    ]


@given(st.lists(st.booleans(), min_size=1, max_size=8), st.data())
def test_a_plan_last_stream_cut_anywhere_is_never_complete(tmp_path_factory, oks, data):
    text = (
        "".join(f"{'ok' if ok else 'not ok'} {n} - t{n}\n" for n, ok in enumerate(oks, 1))
        + f"1..{len(oks)}\n"
    )
    # From the end of the first line (before it, the file could be anything) to the plan's last digit.
    cut = data.draw(st.integers(min_value=text.index("\n"), max_value=len(text) - 2))
    path = tmp_path_factory.mktemp("cut") / "t.tap"
    path.write_text(text[:cut])
    _, problems = partition(read_report(path))
    assert len(problems) == 1 and problems[0].kind in {ProblemKind.TRUNCATED, ProblemKind.INCONSISTENT}


def test_more_tests_than_planned_is_inconsistent(reports):
    _, problems = reports.read("t.tap", "1..2\nok 1\nok 2\nok 3\n")
    assert [(p.kind, p.message) for p in problems] == [
        (ProblemKind.INCONSISTENT, "the plan is 1..2 but 3 tests were seen")
    ]


def test_misnumbered_tests_and_second_plans_are_inconsistent(reports):
    _, problems = reports.read("t.tap", "1..3\nok 1\nok 3\nok 2\n")
    assert [(p.kind, p.message) for p in problems] == [
        (ProblemKind.INCONSISTENT, "line 3: test 3 where test 2 was expected")
    ]
    _, problems = reports.read("t.tap", "ok 1\n1..1\n1..1\n")
    assert [(p.kind, p.message) for p in problems] == [(ProblemKind.INCONSISTENT, "line 3: a second plan")]
    _, problems = reports.read("t.tap", "ok 1\n1..2\nok 2\n")
    assert [p.message for p in problems] == ["line 3: a test after the plan that ended the stream"]


def test_a_skipped_file_has_no_case_and_no_problem(reports):
    assert reports.read("t.tap", "1..0 # SKIP no display\n") == ([], [])


def test_a_version_below_13_is_unreadable(reports):
    cases, problems = reports.read("t.tap", "TAP version 12\n1..1\nok 1\n")
    assert cases == []
    assert [p.kind for p in problems] == [ProblemKind.UNREADABLE]


def test_a_line_that_is_not_utf8_stops_the_reading(reports):
    cases, problems = reports.read("t.tap", b"1..3\nok 1 - a\nok 2 - caf\xe9\nok 3\n")
    assert statuses(cases) == [("a", P, "")]
    assert [(p.kind, p.message) for p in problems] == [(ProblemKind.UNREADABLE, "line 3 is not UTF-8 text")]


def test_overlong_lines_are_cut_and_the_stream_goes_on(reports):
    limits = Limits(max_line=100, max_name=40)
    cases, problems = reports.read("t.tap", "1..2\nnot ok 1 - " + "é" * 5000 + "\nok 2 - short\n", limits)
    assert problems == []
    assert [c.status for c in cases] == [F, P]
    assert len(cases[0].name.encode()) <= 40 and cases[1].name == "short"


def test_messages_are_bounded(reports):
    diagnostics = "".join(f"# line {i} of a very long traceback\n" for i in range(1000))
    cases, _ = reports.read("t.tap", f"1..1\nnot ok 1 - x\n{diagnostics}")
    assert len(cases[0].message.encode()) <= 4096 and cases[0].message.endswith("[...]")


def test_cases_past_the_limit_are_not_read(reports):
    cases, problems = reports.read("t.tap", "1..9\n" + "ok\n" * 9, Limits(max_cases=3))
    assert len(cases) == 3
    assert [p.kind for p in problems] == [ProblemKind.TOO_LARGE]


results = st.lists(
    st.sampled_from(["ok", "not ok", "ok # SKIP why", "not ok # TODO later", "ok # TODO"]), max_size=30
)
EXPECTED = {"ok": P, "not ok": F, "ok # SKIP why": S, "not ok # TODO later": S, "ok # TODO": P}


@given(results, st.booleans())
def test_any_well_formed_stream_reads_back(tmp_path_factory, lines, plan_first):
    body = "".join(f"{line.replace('ok', f'ok {n} - case {n}', 1)}\n" for n, line in enumerate(lines, 1))
    plan = f"1..{len(lines)}\n"
    path = tmp_path_factory.mktemp("tap") / "t.tap"
    path.write_text(plan + body if plan_first else body + plan)
    cases, problems = partition(read_report(path))
    assert problems == []
    assert [c.status for c in cases] == [EXPECTED[line] for line in lines]
    assert [c.name for c in cases] == [f"case {n}" for n in range(1, len(lines) + 1)]
    assert all(isinstance(c, TestCase) for c in cases)
