"""Time and memory of reading a 100,000-case JUnit report and a 100,000-case TAP report.

Both files are written to a temporary directory first, with a realistic mix: one case in fifty
fails with a traceback, one in seventy is skipped, a few print output. Each is read three times;
the best time is printed, then the Python heap's peak (tracemalloc) during one more read, and how
much the process's resident high-water mark grew. For comparison, junitparser's own whole-tree
reading (`JUnitXml.fromfile`) of the same file is measured last (it raises the high-water mark, so
it must come after the others). Finally a 1 GiB report (sparse: no disk is used) shows the size
limit refusing it. Run: python bench/bench_reports.py
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import junitparser

from testlab.results import read_report, summarize

CASES = 100_000
SUITES = 100
RUNS = 3
TRACEBACK = "Traceback (most recent call last):\n" + '  File "tests/test_x.py", line 12, in test\n' * 8


def write_junit(path: Path) -> None:
    per_suite = CASES // SUITES
    with path.open("w", encoding="utf-8") as out:
        out.write('<?xml version="1.0" encoding="utf-8"?>\n<testsuites>\n')
        for s in range(SUITES):
            out.write(f'<testsuite name="suite{s}" tests="{per_suite}">\n')
            out.write('  <properties><property name="os" value="win10"/></properties>\n')
            for c in range(per_suite):
                i = s * per_suite + c
                head = f'  <testcase classname="pkg.module{s}" name="test_{c}" time="0.{i % 1000:03d}"'
                if i % 50 == 0:
                    out.write(f'{head}><failure message="assert {i} == 0">{TRACEBACK}</failure></testcase>\n')
                elif i % 70 == 0:
                    out.write(f'{head}><skipped message="not on this OS"/></testcase>\n')
                elif i % 97 == 0:
                    out.write(f"{head}><system-out>some output of case {i}</system-out></testcase>\n")
                else:
                    out.write(f"{head}/>\n")
            out.write("</testsuite>\n")
        out.write("</testsuites>\n")


def write_tap(path: Path) -> None:
    with path.open("w", encoding="utf-8") as out:
        out.write(f"TAP version 13\n1..{CASES}\n")
        for i in range(1, CASES + 1):
            if i % 50 == 0:
                out.write(f"not ok {i} - case {i}\n")
                out.write("".join(f"# {line}\n" for line in TRACEBACK.splitlines()))
            elif i % 70 == 0:
                out.write(f"ok {i} - case {i} # SKIP not on this OS\n")
            else:
                out.write(f"ok {i} - case {i}\n")


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def measure(label: str, read: Callable[[], int], size: int) -> None:
    best = float("inf")
    for _ in range(RUNS):
        start = time.perf_counter()
        count = read()
        best = min(best, time.perf_counter() - start)
    rss_before = max_rss_mib()
    tracemalloc.start()
    read()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_growth = max_rss_mib() - rss_before
    print(
        f"{label:<28} {count:,} cases ({size / 2**20:.1f} MiB): {best:.2f} s, "
        f"heap peak {peak / 1024:,.0f} KiB, resident peak +{rss_growth:.0f} MiB"
    )


def stream(path: Path) -> Callable[[], int]:
    def read() -> int:
        summary = summarize(read_report(path))
        assert not summary.problems, summary.problems
        return summary.total

    return read


def whole_tree(path: Path) -> Callable[[], int]:
    def read() -> int:
        xml = junitparser.JUnitXml.fromfile(str(path))
        return sum(1 for suite in xml for case in suite if case.result is not None)

    return read


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-reports-") as tmp:
        junit, tap, huge = Path(tmp) / "report.xml", Path(tmp) / "report.tap", Path(tmp) / "huge.xml"
        write_junit(junit)
        write_tap(tap)
        print(f"Python {sys.version.split()[0]}, resident at start {max_rss_mib():.0f} MiB")
        measure("junit, streamed", stream(junit), junit.stat().st_size)
        measure("tap, streamed", stream(tap), tap.stat().st_size)
        measure("junit, junitparser tree", whole_tree(junit), junit.stat().st_size)
        with huge.open("wb") as out:
            out.truncate(2**30)
        start = time.perf_counter()
        (problem,) = list(read_report(huge))
        print(f"1 GiB report refused in {(time.perf_counter() - start) * 1000:.2f} ms: {problem}")
        os.unlink(huge)
    return 0


if __name__ == "__main__":
    sys.exit(main())
