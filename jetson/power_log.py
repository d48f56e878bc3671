"""Run a command while sampling ``tegrastats``; report latency, power and energy.

    sudo python3 jetson/power_log.py --interval 200 --out power.json -- \\
        python3 -m runtime index add --index idx --bundle bundle pages/

``tegrastats`` prints one line per interval. ``parse_line`` understands the Orin format (JetPack
5/6: ``VDD_IN 4834mW/4834mW``) and the older Xavier/Nano one (``POM_5V_IN 2123/2123``). The
summary gives wall time, mean and peak board input power, energy (J) and peak RAM, and writes every
sample to JSON. Only the standard library: it runs on a bare JetPack.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from typing import Any

__all__ = ["Sampler", "parse_line", "summarize"]

_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)MB")
_CPU = re.compile(r"\bCPU \[([^\]]*)\]")
_GPU = re.compile(r"\bGR3D_FREQ (\d+)%(?:@\[?(\d+)\]?)?")
_EMC = re.compile(r"\bEMC_FREQ (\d+)%")
_TEMP = re.compile(r"\b([A-Za-z0-9_]+)@(-?\d+(?:\.\d+)?)C\b")
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]+) (\d+)(?:mW)?/(\d+)(?:mW)?\b")
# Board input rail, by generation: Orin (VDD_IN), Xavier NX / Nano (POM_5V_IN / VDD_IN).
INPUT_RAILS = ("VDD_IN", "POM_5V_IN")


def parse_line(line: str) -> dict[str, Any] | None:
    """One tegrastats line -> {ram_mb, ram_total_mb, cpu: [(pct, mhz)|None], gpu_pct, temps, rails_mw}."""
    ram = _RAM.search(line)
    if not ram:
        return None
    out: dict[str, Any] = {"ram_mb": int(ram.group(1)), "ram_total_mb": int(ram.group(2))}
    if swap := _SWAP.search(line):
        out["swap_mb"] = int(swap.group(1))
    if cpu := _CPU.search(line):
        cores = []
        for item in cpu.group(1).split(","):
            m = re.match(r"\s*(\d+)%@(\d+)", item)
            cores.append((int(m.group(1)), int(m.group(2))) if m else None)  # "off": core parked
        out["cpu"] = cores
    if gpu := _GPU.search(line):
        out["gpu_pct"] = int(gpu.group(1))
    if emc := _EMC.search(line):
        out["emc_pct"] = int(emc.group(1))
    out["temps_c"] = {name: float(v) for name, v in _TEMP.findall(line)}
    rails = {}
    for name, cur, avg in _RAIL.findall(line):
        if name in ("RAM", "SWAP", "EMC_FREQ", "GR3D_FREQ"):
            continue
        rails[name] = {"mw": int(cur), "avg_mw": int(avg)}
    out["rails_mw"] = rails
    return out


def input_power_mw(sample: dict[str, Any]) -> int | None:
    for name in INPUT_RAILS:
        if name in sample.get("rails_mw", {}):
            return sample["rails_mw"][name]["mw"]
    return None


def summarize(samples: list[dict[str, Any]], seconds: float, interval_ms: int) -> dict[str, Any]:
    powers = [p for p in (input_power_mw(s) for s in samples) if p is not None]
    out: dict[str, Any] = {"seconds": seconds, "samples": len(samples), "interval_ms": interval_ms}
    if powers:
        mean_w = sum(powers) / len(powers) / 1000
        out.update(mean_input_w=mean_w, peak_input_w=max(powers) / 1000, energy_j=mean_w * seconds)
    if samples:
        out["peak_ram_mb"] = max(s["ram_mb"] for s in samples)
        gpu = [s["gpu_pct"] for s in samples if "gpu_pct" in s]
        if gpu:
            out["mean_gpu_pct"] = sum(gpu) / len(gpu)
    return out


class Sampler:
    """``with Sampler(200) as s: ...`` samples tegrastats meanwhile; ``s.summary()`` afterwards.
    Without tegrastats (not a Jetson) it samples nothing and the power figures are None."""

    def __init__(self, interval_ms: int = 200) -> None:
        self.interval_ms = interval_ms
        self.samples: list[dict[str, Any]] = []
        self._proc: subprocess.Popen | None = None
        self._t0 = self._t1 = 0.0

    def __enter__(self) -> Sampler:
        if shutil.which("tegrastats") is not None:
            self._proc = subprocess.Popen(["tegrastats", "--interval", str(self.interval_ms)],
                                          stdout=subprocess.PIPE, text=True)  # fmt: skip
            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()
        self._t0 = time.time()
        return self

    def _read(self) -> None:
        for line in self._proc.stdout:  # type: ignore[union-attr]
            if (s := parse_line(line)) is not None:
                s["t"] = time.time()
                self.samples.append(s)

    def __exit__(self, *exc: object) -> None:
        self._t1 = time.time()
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=5)
            self._reader.join(timeout=2)

    @property
    def during(self) -> list[dict[str, Any]]:
        return [s for s in self.samples if self._t0 <= s["t"] <= self._t1]

    def summary(self) -> dict[str, Any]:
        return summarize(self.during, self._t1 - self._t0, self.interval_ms)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--interval", type=int, default=200, help="tegrastats interval in ms")
    ap.add_argument("--out", default="power.json")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- command to run")
    a = ap.parse_args(argv)
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        ap.error("give the command to measure after --")
    if shutil.which("tegrastats") is None:
        print("error: tegrastats not found (this runs on a Jetson)", file=sys.stderr)
        return 2
    with Sampler(a.interval) as sampler:
        rc = subprocess.call(cmd)
    during = sampler.during
    summary = {"command": cmd, "returncode": rc, **sampler.summary()}
    with open(a.out, "w") as f:
        json.dump({"summary": summary, "samples": during}, f, indent=1)
    print(json.dumps(summary, indent=2))
    return rc


if __name__ == "__main__":
    sys.exit(main())
