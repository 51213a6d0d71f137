"""What the machine is, and how much CPU each group of processes used during a window."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import bcrypt
import psutil

ROOT = Path(__file__).resolve().parent.parent
#: The processes whose CPU is measured apart; the rest of the machine's busy time is "other".
GROUPS = ("gunicorn", "postgres", "vault", "redis", "loadgen")
#: Say so when other processes, or the hypervisor, took this share of one core during a window.
DISTURBANCE_SHARE = 0.15


def cpu_seconds(pid: int) -> float | None:
    with contextlib.suppress(psutil.Error):
        times = psutil.Process(pid).cpu_times()
        return times.user + times.system
    return None


def machine_busy_seconds() -> tuple[float, float]:
    """
    CPU seconds all cores spent running something (guest time is inside user time), and the
    seconds the hypervisor gave this machine's cores to something else while they wanted to run.
    """
    times = psutil.cpu_times()
    busy = sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq"))
    return busy, getattr(times, "steal", 0.0)


@dataclasses.dataclass
class CpuSnapshot:
    """CPU seconds used so far by each process of each group, and the machine's busy seconds."""

    groups: dict[str, dict[int, float]]
    machine_busy: float
    steal: float

    @classmethod
    def take(cls, pids: dict[str, list[int]]) -> CpuSnapshot:
        groups: dict[str, dict[int, float]] = {group: {} for group in GROUPS}
        for group, members in pids.items():
            for pid in members:
                used = cpu_seconds(pid)
                if used is not None:
                    groups[group][pid] = used
        return cls(groups, *machine_busy_seconds())

    def minus(self, before: CpuSnapshot, *, loadgen: float) -> dict[str, float]:
        """CPU seconds each group used since `before` (a process started meanwhile counts whole), and "other"."""
        used = {
            group: round(sum(cpu - before.groups.get(group, {}).get(pid, 0.0) for pid, cpu in pids.items()), 3)
            for group, pids in self.groups.items()
        }
        used["loadgen"] = round(loadgen, 3)  # the load generator measures its own
        used["machine_busy"] = round(self.machine_busy - before.machine_busy, 3)
        used["steal"] = round(self.steal - before.steal, 3)
        # Whatever else kept the machine's cores busy meanwhile (the orchestrator, other people's work).
        used["other"] = round(max(0.0, used["machine_busy"] - sum(used[group] for group in GROUPS)), 3)
        return used


def note_disturbance(cpu: dict[str, float], elapsed: float) -> None:
    """Print a note when other processes or the hypervisor took enough CPU to disturb a window's figures."""
    if cpu["other"] > DISTURBANCE_SHARE * elapsed:
        print(f"    note: other processes used {cpu['other']:.1f} CPU s meanwhile", flush=True)
    if cpu["steal"] > DISTURBANCE_SHARE * elapsed:
        print(f"    note: the hypervisor took {cpu['steal']:.1f} CPU s from this machine meanwhile", flush=True)


def machine_info(pg_version: str) -> dict[str, Any]:
    model = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpu_model": model,
        "cpu_cores_logical": psutil.cpu_count(logical=True),
        "cpu_cores_physical": psutil.cpu_count(logical=False),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "postgresql": pg_version,
        "git_commit": commit or None,
        "git_dirty": bool(dirty),
    }


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, as `uptime` shows them."""
    return [round(value, 2) for value in psutil.getloadavg()]


def bcrypt_verify_seconds(rounds: int) -> float:
    """Time one bcrypt verification at `rounds` on this machine (the best of three)."""
    hashed = bcrypt.hashpw(b"bench", bcrypt.gensalt(rounds))
    best = math.inf
    for _ in range(3):
        began = time.perf_counter()
        bcrypt.checkpw(b"bench", hashed)
        best = min(best, time.perf_counter() - began)
    return best
