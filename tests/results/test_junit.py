"""JUnit XML reports: what becomes a case, what becomes a problem, and what reading them costs."""

from __future__ import annotations

import time
import tracemalloc

import pytest

from testlab.results import CaseStatus, Limits, ProblemKind, TestCase, read_report

SEVERAL_SUITES = """<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="all" tests="6" failures="1" errors="1" skipped="1">
  <testsuite name="parser" tests="3" time="0.6">
    <properties>
      <property name="platform" value="win10"/>
    </properties>
    <testcase classname="tests.test_parser" name="test_empty" time="0.1"/>
    <testcase classname="tests.test_parser" name="test_quotes" time="0.25">
      <failure message="assert 'a' == 'b'" type="AssertionError">Traceback (most recent call last):
  File "tests/test_parser.py", line 12, in test_quotes
AssertionError</failure>
      <system-out>printed while failing</system-out>
    </testcase>
    <testcase classname="tests.test_parser" name="test_unicode" time="0.25">
      <skipped message="needs a UTF-8 console"/>
    </testcase>
    <system-out>suite output</system-out>
  </testsuite>
  <testsuite name="network">
    <testcase name="test_connect" time="1.5">
      <error message="ConnectionRefusedError" type="OSError">could not connect</error>
    </testcase>
    <testcase name="test_dns" time="fast"/>
    <testcase name="test_time" time="1,234.5"/>
  </testsuite>
</testsuites>
"""


def test_several_suites(reports):
    cases, problems = reports.read("results.xml", SEVERAL_SUITES)
    assert problems == []
    assert cases == [
        TestCase("tests.test_parser", "test_empty", CaseStatus.PASSED, "", 0.1),
        TestCase(
            "tests.test_parser",
            "test_quotes",
            CaseStatus.FAILED,
            "assert 'a' == 'b'\nTraceback (most recent call last):\n"
            '  File "tests/test_parser.py", line 12, in test_quotes\nAssertionError',
            0.25,
        ),
        TestCase("tests.test_parser", "test_unicode", CaseStatus.SKIPPED, "needs a UTF-8 console", 0.25),
        TestCase(
            "network", "test_connect", CaseStatus.ERROR, "ConnectionRefusedError\ncould not connect", 1.5
        ),
        # A duration that is no number is no duration; a thousands separator is read.
        TestCase("network", "test_dns", CaseStatus.PASSED, "", None),
        TestCase("network", "test_time", CaseStatus.PASSED, "", 1234.5),
    ]


def test_a_single_testsuite_root(reports):
    cases, problems = reports.read(
        "r.xml", '<testsuite name="solo"><testcase name="a" time="2"/><testcase name="b"/></testsuite>'
    )
    assert problems == []
    assert [(c.suite, c.name, c.duration) for c in cases] == [("solo", "a", 2.0), ("solo", "b", None)]


def test_nested_suites_name_their_path(reports):
    cases, problems = reports.read(
        "r.xml",
        """<testsuites>
             <testsuite name="outer">
               <testcase name="top"/>
               <testsuite name="inner"><testcase name="deep"/></testsuite>
               <testsuite><testcase name="anonymous"/></testsuite>
               <testcase name="after"/>
             </testsuite>
             <testcase name="loose"/>
           </testsuites>""",
    )
    assert problems == []
    assert [(c.suite, c.name) for c in cases] == [
        ("outer", "top"),
        ("outer/inner", "deep"),
        ("outer", "anonymous"),
        ("outer", "after"),
        ("r.xml", "loose"),  # outside any named suite: the file names it
    ]


def test_an_error_outranks_a_failure_and_a_failure_a_skip(reports):
    cases, _ = reports.read(
        "r.xml",
        """<testsuite name="s">
             <testcase name="both"><failure message="f"/><error message="e"/></testcase>
             <testcase name="odd"><skipped/><failure message="f"/></testcase>
             <testcase name="bare"><failure/></testcase>
           </testsuite>""",
    )
    assert [(c.status, c.message) for c in cases] == [
        (CaseStatus.ERROR, "e"),
        (CaseStatus.FAILED, "f"),
        (CaseStatus.FAILED, ""),
    ]


def test_messages_and_names_are_bounded(reports):
    long = "é" * 10_000  # two bytes each
    cases, _ = reports.read(
        "r.xml",
        f'<testsuite name="{long}"><testcase name="{long}"><failure>{long}</failure></testcase></testsuite>',
    )
    (case,) = cases
    assert len(case.message.encode()) <= 4096 and case.message.endswith("[...]")
    assert len(case.name.encode()) <= 1024 and len(case.suite.encode()) <= 1024
    assert case.message.startswith("éé")


def test_passing_cases_keep_no_output(reports):
    cases, _ = reports.read(
        "r.xml",
        '<testsuite name="s"><testcase name="a"><system-out>noise</system-out></testcase></testsuite>',
    )
    assert cases == [TestCase("s", "a", CaseStatus.PASSED)]


def test_other_encodings_are_read(reports):
    declaration = '<?xml version="1.0" encoding="ISO-8859-1"?>'
    latin1 = declaration + '<testsuite name="caf\xe9"><testcase name="t"/></testsuite>'
    cases, problems = reports.read("latin1.xml", latin1.encode("latin-1"))
    assert problems == [] and cases[0].suite == "café"
    utf16 = (
        '<?xml version="1.0" encoding="UTF-16"?><testsuite name="s"><testcase name="t\u00fc"/></testsuite>'
    )
    cases, problems = reports.read("utf16.xml", utf16.encode("utf-16"))
    assert problems == [] and cases[0].name == "tü"


COMPLETE = (
    '<?xml version="1.0"?>\n<testsuites>\n<testsuite name="s">\n'
    '<testcase name="a"/>\n<testcase name="b"><failure message="m">text</failure></testcase>\n'
    "</testsuite>\n</testsuites>"
)


def test_a_report_cut_anywhere_is_truncated(reports):
    """Every prefix of a report that lacks its closing tag reads as truncated, never as complete."""
    kinds = set()
    for end in range(1, len(COMPLETE)):
        cases, problems = reports.read("cut.xml", COMPLETE[:end])
        assert len(problems) == 1, COMPLETE[:end]
        kinds.add(problems[0].kind)
        assert len(cases) <= 2
    # Blank-free prefixes are truncated; the first byte alone too ("<" opens a document).
    assert kinds == {ProblemKind.TRUNCATED}


def test_cases_read_before_a_cut_stand(reports):
    cut = COMPLETE[: COMPLETE.index("</testsuite>")]
    cases, problems = reports.read("cut.xml", cut)
    assert [c.name for c in cases] == ["a", "b"]
    assert [(p.file, p.kind) for p in problems] == [("cut.xml", ProblemKind.TRUNCATED)]
    assert "line" in problems[0].message


def test_malformed_xml_is_unreadable_with_its_place(reports):
    cases, problems = reports.read(
        "bad.xml", '<testsuite name="s">\n<testcase name="a"/>\n<testcase name="b">< /testcase>\n</testsuite>'
    )
    assert [c.name for c in cases] == ["a"]
    (problem,) = problems
    assert problem.kind == ProblemKind.UNREADABLE
    assert problem.message.startswith("malformed XML at line 3")


def test_invalid_utf8_in_xml_is_unreadable(reports):
    _, problems = reports.read("bad.xml", b'<testsuite name="\xff\xfe"><testcase name="a"/></testsuite>')
    assert [p.kind for p in problems] == [ProblemKind.UNREADABLE]


def test_xml_that_is_not_junit_is_unreadable(reports):
    cases, problems = reports.read("page.xml", "<html><body>500 Internal Server Error</body></html>")
    assert cases == []
    assert [(p.kind, p.message) for p in problems] == [
        (ProblemKind.UNREADABLE, "XML whose root is <html>, not a JUnit <testsuites> or <testsuite>")
    ]


BOMB = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<testsuite name="s"><testcase name="&lol9;"><failure message="&lol9;"/></testcase></testsuite>
"""


def test_an_entity_bomb_is_refused_quickly(reports):
    start = time.perf_counter()
    cases, problems = reports.read("bomb.xml", BOMB)
    assert time.perf_counter() - start < 1.0
    assert cases == []
    (problem,) = problems
    assert problem.kind == ProblemKind.UNREADABLE
    assert problem.message.startswith("refused: a document type declaration")


def test_external_entities_are_refused(reports, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    cases, problems = reports.read(
        "ext.xml",
        f'<!DOCTYPE t [<!ENTITY x SYSTEM "file://{secret}">]>'
        '<testsuite name="&x;"><testcase name="a"/></testsuite>',
    )
    assert cases == [] and [p.kind for p in problems] == [ProblemKind.UNREADABLE]
    assert "s3cret" not in str(problems[0])


def test_cases_past_the_limit_are_not_read(reports):
    body = "".join(f'<testcase name="t{i}"/>' for i in range(10))
    cases, problems = reports.read("many.xml", f'<testsuite name="s">{body}</testsuite>', Limits(max_cases=4))
    assert [c.name for c in cases] == ["t0", "t1", "t2", "t3"]
    assert [(p.kind, p.message) for p in problems] == [
        (ProblemKind.TOO_LARGE, "more than 4 test cases; the rest of the file is not read")
    ]


def _junit(path, suites: int, per_suite: int) -> None:
    with path.open("w") as out:
        out.write("<testsuites>\n")
        for s in range(suites):
            out.write(f'<testsuite name="suite{s}">\n')
            for c in range(per_suite):
                out.write(
                    f'<testcase classname="m{s}" name="t{c}" time="0.01">'
                    f'<failure message="boom">{"x" * 200}</failure></testcase>\n'
                )
            out.write("</testsuite>\n")
        out.write("</testsuites>\n")


@pytest.mark.parametrize("cases", [2_000, 20_000])
def test_memory_does_not_grow_with_the_number_of_cases(tmp_path, cases):
    """Read as a stream: ten times the cases, about the same peak (a whole tree would be ten times)."""
    path = tmp_path / "big.xml"
    _junit(path, suites=cases // 1000, per_suite=1000)
    tracemalloc.start()
    try:
        count = sum(1 for _ in read_report(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == cases
    assert peak < 2 * 1024 * 1024, f"{peak} bytes at peak for {cases} cases"
