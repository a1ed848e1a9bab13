#!/usr/bin/env python3
"""What a board has: OS, CPU, cores, memory, Python, which runtimes import, and on a Jetson the
L4T/JetPack release, TensorRT version, power mode and clocks. Self-contained (stdlib only) and
Python 3.8-compatible, like runner.py; prints one JSON object."""

import importlib
import json
import os
import platform
import shutil
import subprocess
import sys


def read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def command(argv, timeout=10):
    if shutil.which(argv[0]) is None:
        return None
    try:
        return subprocess.run(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout, universal_newlines=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def os_name():
    for line in (read("/etc/os-release") or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return platform.platform()


def cpu_model():
    for line in (read("/proc/cpuinfo") or "").splitlines():
        key = line.split(":")[0].strip().lower()
        if key in ("model name", "hardware", "cpu model"):
            return line.split(":", 1)[1].strip()
    return read("/proc/device-tree/model") or platform.processor() or platform.machine()


def memory_mb():
    for line in (read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    try:  # no /proc (a chroot, a container without it): the C library asks the kernel
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    except (ValueError, OSError):
        return None


def runtime_versions():
    out = {}
    for name, module in (
        ("onnxruntime", "onnxruntime"),
        ("litert", "ai_edge_litert"),
        ("tflite_runtime", "tflite_runtime"),
        ("openvino", "openvino"),
        ("tensorrt", "tensorrt"),
        ("numpy", "numpy"),
    ):
        try:
            mod = importlib.import_module(module)
            out[name] = getattr(mod, "__version__", "installed")
        except Exception:
            out[name] = None
    return out


def jetson():
    release = read("/etc/nv_tegra_release")
    if release is None:
        return None
    trtexec = shutil.which("trtexec") or (
        "/usr/src/tensorrt/bin/trtexec" if os.path.exists("/usr/src/tensorrt/bin/trtexec") else None
    )
    dpkg = command(["dpkg-query", "-W", "-f", "${Version}", "tensorrt"])
    return {
        "l4t": release.splitlines()[0],
        "jetpack": command(["dpkg-query", "-W", "-f", "${Version}", "nvidia-jetpack"]),
        "tensorrt": dpkg,
        "trtexec": trtexec,
        "soc": read("/proc/device-tree/compatible"),
        "power_mode": command(["nvpmodel", "-q"]),
        "clocks": command(["jetson_clocks", "--show"]),
    }


def main():
    info = {
        "os": os_name(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_mb": memory_mb(),
        "python": platform.python_version(),
        "python_path": sys.executable,
        "runtimes": runtime_versions(),
        "governor": read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "jetson": jetson(),
    }
    sys.stdout.write(json.dumps(info) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
