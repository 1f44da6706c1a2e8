"""Real QEMU guest benchmark: revert to agent ready, task start, file transfer through the forwarded port.

Run as root: python bench/bench_realvm.py [--reverts N] [--runs N] [--size-mb M] [--transfers T]

It builds the guest image (or reuses the cached one the realvm tests use), starts libvirtd when no
service manager runs it, provisions a throwaway domain with `testlab vm provision`'s service function,
measures through HostDriver and the agent client exactly as the engine uses them, then removes the
domain. The local backend's numbers for the same steps are in bench_local_revert.py and bench_agent.py.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the realvm test helpers run the host

from testlab.agent.client import AgentClient
from testlab.config import Settings
from testlab.db.session import session_scope, upgrade
from testlab.domain.labfile import parse_lab_text
from testlab.hypervisor import HostDriver, open_backend
from testlab.services.lab import apply_lab
from testlab.services.provision import ProvisionRequest, provision_vm
from tests.realvm.host import URI, Daemons, build_image, free_port, remove_domains

SNAPSHOT = "clean"


def provision(image: Path, root: Path, disk_dir: Path, domain: str, port: int) -> Settings:
    settings = Settings(home=root / "home", database_url=f"sqlite:///{root / 'home' / 'testlab.db'}")
    settings.home.mkdir(parents=True)
    upgrade(settings.database_url)
    lab = parse_lab_text(
        f"hosts:\n  - {{name: bench, backend: libvirt, uri: '{URI}', domain_type: qemu, "
        f"agent_token_file: {image / 'agent.token'}}}\n"
        f"vms:\n  - {{name: {domain}, host: bench, snapshot: {SNAPSHOT}, agent: 'http://127.0.0.1:{port}'}}\n"
    )
    with session_scope(settings.database_url) as session:
        apply_lab(session, lab)
    print(provision_vm(settings, ProvisionRequest(vm=domain, image_dir=image, disk_dir=disk_dir)))
    return settings


def ms(values: list[float]) -> str:
    low, mid, high = (round(v * 1000) for v in (min(values), statistics.median(values), max(values)))
    return f"{mid} ms median (min {low}, max {high})"


async def measure(domain: str, url: str, token: str, args: argparse.Namespace, scratch: Path) -> None:
    backend = open_backend("libvirt", "bench", URI, {"shutdown_grace": 0})
    async with HostDriver(backend) as driver:
        agent = AgentClient(url, token, connect_timeout=5, request_timeout=60, retry_deadline=30)
        try:
            revert_calls, readies, boot = [], [], None
            for _ in range(args.reverts):
                started = time.perf_counter()
                await driver.revert(domain, SNAPSHOT)
                reverted = time.perf_counter()
                info = await agent.wait_until_up(timeout=120, not_boot_id=boot)
                boot = info.boot_id
                revert_calls.append(reverted - started)
                readies.append(time.perf_counter() - started)
            print(f"revert (libvirt call, domain running):   {ms(revert_calls)}")
            print(f"revert -> agent ready (new boot id):     {ms(readies)}")

            starts = []
            for n in range(args.runs):
                started = time.perf_counter()
                state = await agent.start(f"bench-{n}", argv=["true"])
                final = await agent.wait(state.id, boot_id=state.boot_id)
                starts.append(time.perf_counter() - started)
                assert final.exit_code == 0
            print(f"task start: start `true`, get its exit:  {ms(starts)}")

            source = scratch / "payload"
            source.write_bytes(os.urandom(args.size_mb << 20))
            uploads, downloads = [], []
            for n in range(args.transfers):
                started = time.perf_counter()
                await agent.upload(source, f"bench/payload-{n}")
                uploads.append(time.perf_counter() - started)
                target = scratch / f"down-{n}"
                started = time.perf_counter()
                await agent.download(f"bench/payload-{n}", target)
                downloads.append(time.perf_counter() - started)
                await agent.delete(f"bench/payload-{n}")
            size = args.size_mb
            up, down = statistics.median(uploads), statistics.median(downloads)
            print(f"upload {size} MB:   {size / up:6.1f} MB/s median ({up:.2f} s)")
            print(f"download {size} MB: {size / down:6.1f} MB/s median ({down:.2f} s)")
        finally:
            await agent.aclose()
            await driver.power_off(domain)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reverts", type=int, default=5)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--size-mb", type=int, default=64)
    parser.add_argument("--transfers", type=int, default=3)
    args = parser.parse_args()
    daemons = Daemons.ensure()
    domain = f"testlab-bench{os.getpid()}"
    disk_dir = Path(tempfile.mkdtemp(prefix="testlab-bench-", dir="/var/tmp"))
    disk_dir.chmod(0o755)
    try:
        image, seconds, line = build_image()
        print(f"{line} [{seconds:.0f} s]")
        with tempfile.TemporaryDirectory() as scratch:
            port = free_port()
            started = time.perf_counter()
            provision(image, Path(scratch), disk_dir, domain, port)
            print(f"provisioned in {time.perf_counter() - started:.1f} s")
            token = (image / "agent.token").read_text().strip()
            asyncio.run(measure(domain, f"http://127.0.0.1:{port}", token, args, Path(scratch)))
    finally:
        remove_domains([domain], disk_dir)
        daemons.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
