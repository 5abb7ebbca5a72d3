"""Helpers the benchmark scripts share, importing nothing heavier than torch: the machine, package versions,
CUDA synchronisation, the process's RSS high-water mark and a worker-process runner."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work, so that wall-clock times cover it; nothing to do on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"platform": platform.platform(), "machine": platform.machine(), "nproc": os.cpu_count(),
            "cpu_model": cpu, "torch_default_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def versions() -> dict:
    """Installed versions, read from the package metadata (importing trl or datasets here would cost seconds)."""
    def version(package):
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    packages = ("torch", "transformers", "trl", "accelerate", "datasets", "peft")
    avalign = sys.modules.get("avalign")  # run from a source tree it is on the path, not installed
    return {"python": platform.python_version(), **{name: version(name) for name in packages},
            "avalign": avalign.__version__ if avalign is not None else version("avalign")}


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """This process's RSS high-water mark (VmHWM). Not ru_maxrss: a child inherits its parent's maximum at fork,
    and resetting the high-water mark does not lower it."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))  # kB


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) to the current RSS: peaks of loading and tokenising then do
    not count as training peaks. False where /proc/self/clear_refs is not writable."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_command(command: list[str], env: dict, timeout: int | None = None) -> dict:
    """A worker process's last stdout line as JSON, or {"error": ...} when it failed or timed out."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        return {"error": f"exit {result.returncode}: {result.stderr.strip()[-2000:]}"}
    return json.loads(lines[-1])
