"""Artifact downloads cannot hang the agent: no symlinked directory is entered, and entries, bytes and
listing time are bounded, each refusal a 4xx with an `artifacts_*` code the engine charges to the task."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from testlab.agent.client import AgentClient, ProtocolError
from tests.agent.conftest import AgentProcess, run


def client(agent: AgentProcess) -> AgentClient:
    return AgentClient(agent.url, agent.token, request_timeout=10, retry_deadline=10)


async def run_task(c: AgentClient, shell: str) -> None:
    started = await c.start("make", shell=shell, cwd="job")
    final = await c.wait("make", boot_id=started.boot_id)
    assert (final.state, final.exit_code) == ("exited", 0), await c.read_output("make")


def refusal(agent: AgentProcess, pattern: str) -> httpx.Response:
    return httpx.get(
        f"{agent.url}/v1/archive",
        params={"pattern": pattern},
        headers={"Authorization": f"Bearer {agent.token}"},
        timeout=30,
    )


def test_a_symlink_loop_is_answered_at_once_and_links_stay_links(agent: AgentProcess, tmp_path: Path) -> None:
    async def scenario() -> list[Path]:
        async with client(agent) as c:
            await run_task(
                c,
                "mkdir -p out/sub && echo result > out/sub/report.xml && ln -s ../../.. out/c "
                "&& ln -s .. out/sub/loop && ln -s report.xml out/sub/latest.xml",
            )
            started = time.monotonic()
            files = await c.download("job/out/**", tmp_path / "dl")
            assert time.monotonic() - started < 5
            return files

    run(scenario(), timeout=60)
    out = tmp_path / "dl" / "job" / "out"
    assert (out / "sub" / "report.xml").read_text() == "result\n"
    # Links inside the tree arrive as links, never as copies of what they point to.
    assert os.readlink(out / "sub" / "loop") == ".."
    assert os.readlink(out / "sub" / "latest.xml") == "report.xml"
    # out/c points above the archive's tree: dropped, not followed.
    assert not os.path.lexists(out / "c")
    members = sorted(str(p.relative_to(tmp_path / "dl")) for p in (tmp_path / "dl").rglob("*"))
    assert members == [
        "job",
        "job/out",
        "job/out/sub",
        "job/out/sub/latest.xml",
        "job/out/sub/loop",
        "job/out/sub/report.xml",
    ]
    assert agent.alive()


def test_a_link_to_a_directory_matched_by_a_glob_is_not_entered(agent: AgentProcess, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with client(agent) as c:
            await run_task(c, "mkdir -p out real/deep && echo x > real/deep/f.xml && ln -s ../real out/link")
            await c.download("job/out/*", tmp_path / "star")
            await c.download("job/out/**/*.xml", tmp_path / "deep")

    run(scenario())
    assert os.readlink(tmp_path / "star" / "job" / "out" / "link") == "../real"
    assert not (tmp_path / "deep").exists() or not any((tmp_path / "deep").rglob("f.xml"))


@pytest.mark.parametrize("extra", [101, 100])
def test_too_many_entries_are_refused(agent_factory, extra: int) -> None:  # type: ignore[no-untyped-def]
    agent = agent_factory(f"e{extra}", extra_args=["--max-archive-entries", "100"])

    async def scenario() -> None:
        async with client(agent) as c:
            # The directory `out` and its files: 100 entries fit, 101 do not.
            await run_task(c, f"mkdir out && cd out && for i in $(seq {extra - 1}); do : > f$i; done")

    run(scenario())
    answer = refusal(agent, "job/out")
    if extra == 100:
        assert answer.status_code == 200 and answer.headers["x-match-count"] == "1"
        return
    assert answer.status_code == 413
    assert answer.json() == {
        "error": "artifacts 'job/out': more than 100 files and directories",
        "code": "artifacts_too_many",
    }

    async def through_the_client() -> None:
        async with client(agent) as c:
            with pytest.raises(ProtocolError, match="more than 100 files") as info:
                await c.download("job/out", Path(agent.workdir.parent / "dl"))
            assert info.value.code == "artifacts_too_many"

    run(through_the_client())


def test_too_many_bytes_are_refused(agent_factory) -> None:  # type: ignore[no-untyped-def]
    agent = agent_factory("b", extra_args=["--max-archive-bytes", "1000000"])

    async def scenario() -> None:
        async with client(agent) as c:
            await run_task(
                c, "mkdir out && head -c 600000 /dev/zero > out/a && head -c 400000 /dev/zero > out/b"
            )
            assert (await c.info()).free_disk_bytes > 0

    run(scenario())
    assert refusal(agent, "job/out/a").status_code == 200  # alone, within the limit
    assert refusal(agent, "job/out/*").status_code == 200  # exactly 1,000,000 bytes
    run(_add_byte(agent))
    answer = refusal(agent, "job/out/*")
    assert answer.status_code == 413
    assert answer.json() == {
        "error": "artifacts 'job/out/*': more than 1000000 bytes",
        "code": "artifacts_too_large",
    }


async def _add_byte(agent: AgentProcess) -> None:
    async with client(agent) as c:
        await c.upload_bytes(b"x", "job/out/c")


def test_a_listing_over_its_time_is_refused(agent_factory) -> None:  # type: ignore[no-untyped-def]
    agent = agent_factory("t", extra_args=["--archive-timeout", "0.01"])

    async def scenario() -> None:
        async with client(agent) as c:
            await run_task(
                c,
                "python3 -c \"import os\nfor d in range(200):\n os.makedirs(f'data/{d}')\n"
                " for f in range(100): open(f'data/{d}/{f}.xml', 'w').close()\"",
            )

    run(scenario())
    started = time.monotonic()
    answer = refusal(agent, "job/data/**/*.xml")
    assert time.monotonic() - started < 5
    assert answer.status_code == 422
    assert answer.json() == {
        "error": "listing the artifacts 'job/data/**/*.xml' took more than 0.01 s",
        "code": "artifacts_timeout",
    }
    assert refusal(agent, "job/data/0/1.xml").status_code == 200  # a quick one still goes through


def test_the_limits_are_in_info(agent_factory) -> None:  # type: ignore[no-untyped-def]
    agent = agent_factory("i", extra_args=["--max-archive-entries", "7", "--max-upload-bytes", "5000"])
    info = httpx.get(f"{agent.url}/v1/info", headers={"Authorization": f"Bearer {agent.token}"}).json()
    assert (info["max_archive_entries"], info["max_archive_bytes"]) == (7, 5000)
