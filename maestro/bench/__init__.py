"""Benchmarks behind ``maestro bench ...``.

Each module exposes ``main(json_output: bool = False, quick: bool = False) -> dict``; a
benchmark reports ratios against a competitor measured in the same run, with the machine,
versions and settings printed beside the numbers.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any


def machine_info() -> dict[str, Any]:
    """What a reader needs to judge a number: machine, threads, versions."""
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    for name in ("torch", "transformers", "sqlalchemy", "llama_cpp"):
        module = sys.modules.get(name)
        if module is not None:
            info[f"{name}_version"] = getattr(module, "__version__", "?")
    return info
