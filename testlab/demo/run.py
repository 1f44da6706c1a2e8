"""Run the demo: apply the demo lab, submit the example jobs, run the engine until they end."""

from __future__ import annotations

import asyncio
import time
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table
from sqlalchemy import select

from testlab.config import Settings, current_user
from testlab.db.models import VM, Host, Job, Step, Task
from testlab.db.session import session_scope, upgrade
from testlab.domain.jobfile import parse_job
from testlab.domain.labfile import parse_lab_text
from testlab.domain.statuses import TaskStatus
from testlab.engine.daemon import Engine
from testlab.engine.options import EngineOptions
from testlab.services.hosts import power_off_vms, prepare_domains
from testlab.services.jobs import submit_job
from testlab.services.lab import apply_lab
from testlab.terminal import styled

JOBS = {  # file -> the status the job must end in
    "build-and-test.yaml": TaskStatus.COMPLETED,
    "failing-test.yaml": TaskStatus.FAILED,
    "timeout.yaml": TaskStatus.TIMEOUT,
}


def _demo_dir() -> Path:
    return Path(str(resources.files("testlab.demo")))


def setup(settings: Settings) -> list[int]:
    """Create (or update) the demo lab and submit the demo jobs; returns their ids."""
    settings.home.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)
    text = (_demo_dir() / "lab.yaml").read_text().replace("{home}", str(settings.home))
    lab = parse_lab_text(text, "demo lab", settings.home)
    job_ids = []
    prepare_domains(lab)
    with session_scope(settings.database_url) as session:
        apply_lab(session, lab)
    for name in JOBS:
        definition = parse_job(_demo_dir() / name)
        with session_scope(settings.database_url) as session:
            job_ids.append(submit_job(session, settings, definition, owner=current_user()))
    return job_ids


def shut_down(settings: Settings) -> None:
    """Power the sandbox VMs off so the demo leaves no process behind; the next run reverts them."""
    with session_scope(settings.database_url, readonly=True) as session:
        names = list(session.scalars(select(VM.name).join(VM.host).where(Host.backend == "local")))
    power_off_vms(settings.database_url, names, by="demo")


def _statuses(settings: Settings, job_ids: list[int]) -> dict[int, str]:
    with session_scope(settings.database_url) as session:
        return dict(session.execute(select(Job.id, Job.status).where(Job.id.in_(job_ids))).all())


def _board(settings: Settings, job_ids: list[int], started: float) -> Table:
    table = Table(title=f"testlab demo: {time.monotonic() - started:4.1f}s", title_justify="left")
    for column in ("job", "name", "step", "vm", "task"):
        table.add_column(column)
    with session_scope(settings.database_url) as session:
        rows = session.execute(
            select(Job.id, Job.name, Step.name, VM.name, Task.status, Task.detail)
            .join(Step, Task.step_id == Step.id)
            .join(Job, Task.job_id == Job.id)
            .outerjoin(VM, Task.vm_id == VM.id)
            .where(Job.id.in_(job_ids))
            .order_by(Job.id, Step.number, Task.number)
        ).all()
    for job_id, job_name, step, vm, status, detail in rows:
        table.add_row(
            str(job_id), job_name, step, vm or "(any)", styled(status) + (f" ({detail})" if detail else "")
        )
    return table


def run_demo(settings: Settings, *, timeout: float = 120.0) -> int:
    console = Console()
    started = time.monotonic()
    console.print(f"[bold]testlab demo[/bold] in {settings.home}")
    job_ids = setup(settings)
    options = EngineOptions.from_env()

    async def main() -> None:
        engine = Engine(settings, options)
        deadline = time.monotonic() + timeout

        def finished() -> bool:
            statuses = _statuses(settings, job_ids)
            return all(s in TaskStatus.FINAL for s in statuses.values()) or time.monotonic() > deadline

        async def show(live: Live) -> None:
            while True:
                live.update(await asyncio.to_thread(_board, settings, job_ids, started))
                await asyncio.sleep(0.25)

        if not console.is_terminal:  # a log or a pipe gets the final board once, not a live one
            await engine.run(until=finished)
            console.print(_board(settings, job_ids, started))
            return
        with Live(console=console, refresh_per_second=8, transient=False) as live:
            painter = asyncio.create_task(show(live))
            try:
                await engine.run(until=finished)
            finally:
                painter.cancel()
            live.update(_board(settings, job_ids, started))
        console.print()

    asyncio.run(main())
    shut_down(settings)
    statuses = _statuses(settings, job_ids)
    elapsed = time.monotonic() - started
    results = Table(title="results", title_justify="left")
    for column in ("job", "file", "status", "expected"):
        results.add_column(column)
    ok = True
    for job_id, (name, expected) in zip(job_ids, JOBS.items(), strict=True):
        results.add_row(str(job_id), name, styled(statuses[job_id]), expected)
        ok &= statuses[job_id] == expected
    console.print(results)
    console.print(
        f"{'all jobs ended as expected' if ok else 'UNEXPECTED RESULTS'} in {elapsed:.1f}s; "
        f"logs and artifacts under {settings.jobs_dir}"
    )
    return 0 if ok else 1
