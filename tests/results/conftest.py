"""Helpers for the report tests: write a report into the test's directory and read it back."""

from __future__ import annotations

from pathlib import Path

import pytest

from testlab.results import DEFAULT_LIMITS, Limits, ReportProblem, TestCase, partition, read_report


class Reports:
    def __init__(self, root: Path) -> None:
        self.root = root

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            path.write_bytes(content)
        return path

    def read(
        self, name: str, content: str | bytes, limits: Limits = DEFAULT_LIMITS
    ) -> tuple[list[TestCase], list[ReportProblem]]:
        return partition(read_report(self.write(name, content), limits=limits))


@pytest.fixture
def reports(tmp_path: Path) -> Reports:
    return Reports(tmp_path)
