"""Test results: reading a task's JUnit and TAP reports, summing them, wording how a task ended.

Pure: nothing here touches the database or the network; reading the report files is its only I/O.
"""

from testlab.results.classify import Verdict, VerdictKind, classify
from testlab.results.model import DEFAULT_LIMITS, CaseStatus, Limits, ProblemKind, ReportProblem, TestCase
from testlab.results.reports import collect_reports, detect_format, partition, read_report
from testlab.results.summary import ReportSummary, status_after_exit, summarize

__all__ = [
    "DEFAULT_LIMITS",
    "CaseStatus",
    "Limits",
    "ProblemKind",
    "ReportProblem",
    "ReportSummary",
    "TestCase",
    "Verdict",
    "VerdictKind",
    "classify",
    "collect_reports",
    "detect_format",
    "partition",
    "read_report",
    "status_after_exit",
    "summarize",
]
