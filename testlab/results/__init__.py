"""Test results: reading a task's JUnit and TAP reports.

Pure: nothing here touches the database or the network; reading the report files is its only I/O.
"""

from testlab.results.model import DEFAULT_LIMITS, CaseStatus, Limits, ProblemKind, ReportProblem, TestCase
from testlab.results.reports import collect_reports, detect_format, partition, read_report

__all__ = [
    "DEFAULT_LIMITS",
    "CaseStatus",
    "Limits",
    "ProblemKind",
    "ReportProblem",
    "TestCase",
    "collect_reports",
    "detect_format",
    "partition",
    "read_report",
]
