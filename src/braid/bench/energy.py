"""Energy of a timed call, where a counter is readable: RAPL (powercap) on CPUs, NVML on GPUs.

The counters are read through `zeus` (an optional dependency: `pip install 'braid-llm[energy]'`),
never by hand. Where nothing is readable, for example in a VM without /sys/class/powercap, the
meter says why and every reading is NaN, shown as `n/a` in the tables.
"""

from __future__ import annotations

from pathlib import Path

import torch

POWERCAP = Path("/sys/class/powercap")


class EnergyMeter:
    def __init__(self) -> None:
        self.monitor = None
        self.reason = ""
        gpus = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        if not gpus and not any(POWERCAP.glob("intel-rapl*")):
            self.reason = f"n/a: no RAPL counters ({POWERCAP} has none) and no GPU"
            return
        try:
            from zeus.monitor import ZeusMonitor
        except ImportError:
            self.reason = "n/a: counters exist but zeus is not installed (braid-llm[energy])"
            return
        try:
            self.monitor = ZeusMonitor(gpu_indices=gpus)  # CPU packages: all it finds
            self.reason = "zeus: " + ("NVML (GPU)" if gpus else "RAPL (CPU packages)")
        except Exception as e:  # zeus raises its own types for unreadable counters
            self.reason = f"n/a: zeus could not open the counters ({type(e).__name__}: {e})"

    @property
    def available(self) -> bool:
        return self.monitor is not None

    def begin(self) -> None:
        if self.monitor is not None:
            self.monitor.begin_window("braid-bench")

    def end(self) -> float:
        """Joules since `begin`, NaN when nothing is readable."""
        if self.monitor is None:
            return float("nan")
        return float(self.monitor.end_window("braid-bench").total_energy)
