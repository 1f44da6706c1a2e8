"""Test results in the database: a task's cases and report problems, reference results, and the split
of a job's failures into new ones and known ones.

A reference job (`reference: true`, or `testlab job mark-reference`) sets, for each (VM, step name,
test case), the result later jobs are compared with. Each entry keeps the last few reference results
(`HISTORY` of them) so a case that flaps between pass and fail (two changes or more) is flagged flaky.
A failing case is *known* when the latest reference run before the job also failed it, *new*
otherwise (it passed there, or the reference never ran it). Reading this for a job costs one query per
task over its own cases and the reference entries of that VM and step: in proportion to the job's test
cases, not to history.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from testlab.db.models import VM, Job, ReferenceResult, ReportProblemRow, Step, Task, TestCaseResult
from testlab.db.rows import EditableRow
from testlab.domain.statuses import TaskStatus
from testlab.results import CaseStatus, ReportProblem, TestCase
from testlab.services.errors import UserError

HISTORY = 5  # reference runs kept per case: flakiness is judged over them
BATCH = 5000  # rows per insert


def case_key(suite: str, name: str) -> str:
    return hashlib.sha1(f"{suite}\0{name}".encode(), usedforsecurity=False).hexdigest()


def replace_task_results(
    session: Session, task_id: int, cases: Iterable[TestCase], problems: Iterable[ReportProblem]
) -> None:
    """A task's cases and report problems, replacing any an earlier collection stored (idempotent:
    an engine restarted mid-way collects again)."""
    session.execute(delete(TestCaseResult).where(TestCaseResult.task_id == task_id))
    session.execute(delete(ReportProblemRow).where(ReportProblemRow.task_id == task_id))
    add_task_cases(session, task_id, cases)
    rows = [
        {"task_id": task_id, "file": p.file[:500], "kind": p.kind, "message": p.message} for p in problems
    ]
    if rows:
        session.execute(insert(ReportProblemRow), rows)


def add_task_cases(session: Session, task_id: int, cases: Iterable[TestCase]) -> None:
    batch: list[dict[str, Any]] = []
    for case in cases:
        batch.append(
            {
                "task_id": task_id,
                "suite": case.suite[:500],
                "name": case.name[:1000],
                "case_key": case_key(case.suite, case.name),
                "status": case.status,
                "message": case.message,
                "duration": case.duration,
            }
        )
        if len(batch) >= BATCH:
            session.execute(insert(TestCaseResult), batch)
            batch = []
    if batch:
        session.execute(insert(TestCaseResult), batch)


def clear_task_results(session: Session, task_id: int) -> None:
    session.execute(delete(TestCaseResult).where(TestCaseResult.task_id == task_id))
    session.execute(delete(ReportProblemRow).where(ReportProblemRow.task_id == task_id))


# ------------------------------------------------------------------------------------ references


def record_reference(session: Session, job: Job | EditableRow, *, task_ids: list[int] | None = None) -> int:
    """Make the job's ended tasks' results (or those of `task_ids`) the reference of their (VM, step,
    case); returns the number of cases recorded. Recording twice changes nothing; an older reference
    job marked after a newer one only fills in the history."""
    count = 0
    query = (
        select(Task.id, Task.vm_id, Step.name)
        .join(Step, Task.step_id == Step.id)
        .where(Task.job_id == job.id, Task.status.in_(("completed", "failed", "timeout")))
    )
    if task_ids is not None:
        query = query.where(Task.id.in_(task_ids))
    rows = session.execute(query).all()
    for task_id, vm_id, step_name in rows:
        known = {
            r.case_key: r
            for r in session.scalars(
                select(ReferenceResult).where(
                    ReferenceResult.vm_id == vm_id, ReferenceResult.step_name == step_name
                )
            )
        }
        new_rows = []
        for key, status in session.execute(
            select(TestCaseResult.case_key, TestCaseResult.status).where(TestCaseResult.task_id == task_id)
        ):
            count += 1
            entry = [job.id, status]
            reference = known.get(key)
            if reference is None:
                new_rows.append({"vm_id": vm_id, "step_name": step_name, "case_key": key, "history": [entry]})
                known[key] = ReferenceResult(history=[entry])  # a case listed twice counts once
                continue
            history = [h for h in reference.history if h[0] != job.id] + [entry]
            reference.history = sorted(history)[-HISTORY:]
        if new_rows:
            session.execute(insert(ReferenceResult), new_rows)
    return count


@dataclass(frozen=True, slots=True)
class CaseResult:
    task_id: int
    vm: str
    step: str
    suite: str
    name: str
    status: str
    message: str
    duration: float | None
    new: bool  # a failure the latest earlier reference run did not have
    flaky: bool  # flipped between pass and fail across the last reference runs

    def as_dict(self) -> dict[str, Any]:
        return {
            "task": self.task_id,
            "vm": self.vm,
            "step": self.step,
            "suite": self.suite,
            "name": self.name,
            "status": self.status,
            "message": self.message,
            "duration": self.duration,
            "new": self.new,
            "flaky": self.flaky,
        }


def _judge(history: list, job_id: int, failing: bool) -> tuple[bool, bool]:
    """(new, flaky) of a case of `job_id` against the reference runs before it. Flaky: it went from
    pass to fail and back (or the other way round) within them; one change is a regression or a fix."""
    earlier = [status for ran, status in history if ran < job_id][-HISTORY:]
    outcomes = [status in CaseStatus.FAILING for status in earlier if status != CaseStatus.SKIPPED]
    flaky = sum(1 for before, after in zip(outcomes, outcomes[1:], strict=False) if before != after) >= 2
    new = failing and not (earlier and earlier[-1] in CaseStatus.FAILING)
    return new, flaky


def job_results(session: Session, job: Job, *, failing_only: bool = False) -> Iterator[CaseResult]:
    """The job's test cases, task by task, each judged against the reference runs before the job."""
    tasks = session.execute(
        select(Task.id, Task.vm_id, VM.name, Step.name)
        .join(Step, Task.step_id == Step.id)
        .join(VM, Task.vm_id == VM.id)
        .where(Task.job_id == job.id)
        .order_by(Task.id)
    ).all()
    for task_id, vm_id, vm_name, step_name in tasks:
        query = select(TestCaseResult).where(TestCaseResult.task_id == task_id)
        if failing_only:
            query = query.where(TestCaseResult.status.in_(CaseStatus.FAILING))
        cases = session.scalars(query.order_by(TestCaseResult.id)).all()
        if not cases:
            continue
        references = dict(
            session.execute(
                select(ReferenceResult.case_key, ReferenceResult.history).where(
                    ReferenceResult.vm_id == vm_id, ReferenceResult.step_name == step_name
                )
            ).all()
        )
        for case in cases:
            new, flaky = _judge(references.get(case.case_key, []), job.id, case.status in CaseStatus.FAILING)
            yield CaseResult(
                task_id,
                vm_name,
                step_name,
                case.suite,
                case.name,
                case.status,
                case.message,
                case.duration,
                new,
                flaky,
            )


def ordered(results: Iterable[CaseResult]) -> list[CaseResult]:
    """New failures first, then known failures, then the rest (each group in report order)."""

    def rank(result: CaseResult) -> int:
        if result.status in CaseStatus.FAILING:
            return 0 if result.new else 1
        return 2

    return sorted(results, key=rank)


@dataclass(frozen=True, slots=True)
class JobVerdict:
    failures: int
    new: int
    known: int
    flaky: int
    problems: int

    @property
    def text(self) -> str:
        if self.failures == 0 and self.problems == 0:
            return "no test failures"
        parts = []
        if self.new:
            parts.append(f"{self.new} new failure{'s' if self.new != 1 else ''}")
        else:
            parts.append("no new failures")
        if self.known:
            parts.append(f"{self.known} known")
        if self.flaky:
            parts.append(f"{self.flaky} flaky")
        if self.problems:
            parts.append(f"{self.problems} report problem{'s' if self.problems != 1 else ''}")
        return ", ".join(parts)


def job_verdict(session: Session, job: Job) -> JobVerdict:
    failing = list(job_results(session, job, failing_only=True))
    problems = session.scalar(
        select(func.count())
        .select_from(ReportProblemRow)
        .join(Task, ReportProblemRow.task_id == Task.id)
        .where(Task.job_id == job.id)
    )
    new = sum(1 for r in failing if r.new)
    return JobVerdict(
        failures=len(failing),
        new=new,
        known=len(failing) - new,
        flaky=sum(1 for r in failing if r.flaky),
        problems=problems or 0,
    )


def task_problems(session: Session, job_id: int) -> dict[int, list[ReportProblem]]:
    found: dict[int, list[ReportProblem]] = {}
    for row in session.scalars(
        select(ReportProblemRow).join(Task, ReportProblemRow.task_id == Task.id).where(Task.job_id == job_id)
    ):
        found.setdefault(row.task_id, []).append(ReportProblem(row.file, row.kind, row.message))
    return found


def mark_reference(session: Session, job: Job) -> int:
    """Make an ended job a reference (`testlab job mark-reference`); returns the cases recorded."""
    if job.status not in TaskStatus.FINAL:
        raise UserError(f"job {job.id} is still {job.status}: a reference must have ended")
    job.reference = True
    return record_reference(session, job)
