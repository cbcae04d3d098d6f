"""The pieces shared by the anypo-against-TRL benchmarks (``grpo_vs_trl.py``, ``dpo_vs_trl.py``).

Each benchmark is one file run two ways: as the driver, which starts two persistent workers (the same
file with ``--worker anypo|trl``) and alternates single training steps between them, and as a worker,
which answers the driver's ``step`` with one JSON line. This module holds what both benchmarks do the
same way: the worker protocol, the CPU and memory probes, the worker processes, the alternating step
loop, the per-phase statistics and the report lines they share. The workloads, the workers' training
code and each benchmark's own report lines stay in the benchmark files.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from anypo.runs import cpu_info

HERE = Path(__file__).resolve().parent
BENCH_PYTHON = HERE / ".venv-bench" / "bin" / "python"
LIBS = ("anypo", "trl")


# ---- probes ----
def cpu_s() -> float:
    """User + system CPU seconds of this process so far (all threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def machine_busy_s() -> float | None:
    """Busy CPU seconds of the whole machine so far, all cores (Linux /proc/stat); None elsewhere."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux -> GB


def versions(packages: Sequence[str]) -> dict[str, str]:
    """Python's version and each of ``packages``' installed version ("not installed" when absent)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for p in packages:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = "not installed"
    return out


CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
"""The instruction-set flags that decide which kernels run (a run on an AVX2 machine and one on an
AVX-512 machine of the same VM kind differ by about 3x in float32 matmul rate)."""

_PROBE = """
import time, torch
a, b = torch.randn(400, 576), torch.randn(576, 1536)
for _ in range(3):
    a @ b
n, t = 50, time.perf_counter()
for _ in range(n):
    a @ b
print(n * 2 * 400 * 576 * 1536 / (time.perf_counter() - t) / 1e9)
"""


def machine_record(python: str, threads: int) -> dict:
    """What the raw records need to compare runs across days: the date, the CPU model and the flags of
    ``CPU_FLAGS`` it has, logical CPUs, memory, the kernel, and the float32 matmul rate (GFLOP/s of a
    training-sized [400, 576] x [576, 1536] product in ``python`` with ``threads`` threads, measured now,
    before the workers start)."""
    info: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "kernel": platform.release(), "cpus": os.cpu_count()}
    model, flags = cpu_info()
    if model or flags:
        info |= {"cpu_model": model, "cpu_flags": [f for f in CPU_FLAGS if f in flags]}
    else:
        info["cpu_model"] = platform.processor() or "unknown"
    try:
        mem = next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
        info["mem_gb"] = round(int(mem.split()[1]) / 1e6, 1)
    except (OSError, StopIteration):
        pass
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    try:
        probe = subprocess.run([python, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120)
        info["matmul_gflops"] = round(float(probe.stdout.strip().splitlines()[-1]), 1)
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        info["matmul_gflops"] = None
    return info


def machine_line(machine: dict, threads: int) -> str:
    """The one line a benchmark prints about ``machine_record``'s machine."""
    return (
        f"machine: {machine.get('cpu_model')}, {' '.join(machine.get('cpu_flags', []))}; float32 matmul "
        f"{machine['matmul_gflops']} GFLOP/s at {threads} threads"
    )


# ---- worker side ----
class Protocol:
    """JSON lines to the driver on the process's original stdout; everything else printed goes to stderr."""

    def __init__(self) -> None:
        sys.stdout.flush()
        self.out = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(2, 1)  # libraries' prints and progress bars land in the worker's log, not in the protocol

    def send(self, kind: str, **payload) -> None:
        self.out.write(json.dumps({"kind": kind, **payload}) + "\n")
        self.out.flush()


def read_command() -> str:
    line = sys.stdin.readline()
    return line.strip() if line else "quit"


class Quit(Exception):
    """The driver said quit: leave trainer.train() between two steps."""


# ---- driver side ----
def add_process_args(ap: argparse.ArgumentParser) -> None:
    """``--python`` and the hidden options the driver gives its workers (``--worker``, ``--total-steps``, ``--tmp``)."""
    ap.add_argument("--python", default=None, help="python of the workers (default: benchmarks/.venv-bench)")
    ap.add_argument("--worker", choices=LIBS, help=argparse.SUPPRESS)
    ap.add_argument("--total-steps", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--tmp", default=None, help=argparse.SUPPRESS)


def prepare_driver(args: argparse.Namespace) -> tuple[str, Path]:
    """The workers' python (``--python``, else the bench venv's, else this one) and ``--out``, its folder made."""
    python = args.python or (str(BENCH_PYTHON) if BENCH_PYTHON.exists() else sys.executable)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return python, out


class Worker:
    """One worker process: ``cmd`` with ``threads`` CPU threads and offline Hugging Face libraries, stderr to ``log``."""

    def __init__(
        self,
        lib: str,
        cmd: list[str],
        threads: int,
        log: Path,
        *,
        close_timeout: float,
        extra_env: dict[str, str] | None = None,
    ):
        env = dict(os.environ)
        env.update(
            OMP_NUM_THREADS=str(threads),
            MKL_NUM_THREADS=str(threads),
            TOKENIZERS_PARALLELISM="false",
            HF_HUB_OFFLINE="1",
            HF_DATASETS_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            **(extra_env or {}),
            PYTHONUNBUFFERED="1",
        )
        self.lib, self.log, self.close_timeout = lib, log, close_timeout
        self.log_file = open(log, "w")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log_file, text=True, env=env
        )

    def read(self, kind: str) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            tail = "".join(self.log.read_text().splitlines(keepends=True)[-30:])
            raise RuntimeError(f"{self.lib} worker exited (code {self.proc.returncode}); {self.log}:\n{tail}")
        msg = json.loads(line)
        if msg.get("kind") != kind:
            raise RuntimeError(f"{self.lib} worker sent {msg.get('kind')!r}, expected {kind!r}")
        return msg

    def send(self, cmd: str) -> None:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.send("quit")
                self.proc.wait(timeout=self.close_timeout)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self.log_file.close()


def alternate_steps(
    workers: dict[str, Worker],
    args: argparse.Namespace,
    phase_keys: Sequence[str],
    extra: dict,
    line: Callable[[dict, bool], str],
) -> list[dict]:
    """``--warmup`` + ``--steps`` steps, each library in turn; the records, each printed by ``line(rec, warm)``.

    A record gets ``warmup``, then ``extra``, the CPU seconds other processes used while the worker ran
    its step (``foreign_cpu_s``, Linux only) and ``other_s``, the step time less the ``phase_keys``.
    """
    records = []
    for i in range(args.warmup + args.steps):
        warm = i < args.warmup
        for lib in LIBS:
            busy = machine_busy_s()
            workers[lib].send("step")
            rec = workers[lib].read("step")
            rec |= {"warmup": warm, **extra}
            if busy is not None:  # CPU time of other processes while the worker ran its step
                rec["foreign_cpu_s"] = max(machine_busy_s() - busy - rec["cpu_s"], 0.0)
            rec["other_s"] = rec["step_s"] - sum(rec[k] or 0.0 for k in phase_keys)
            records.append(rec)
            print(line(rec, warm), flush=True)
    return records


def phase_medians(recs: list[dict], phases: Sequence[tuple[str, str]]) -> dict:
    """The step count and each phase's median over ``recs`` (None where a record lacks it)."""
    s: dict = {"steps": len(recs)}
    for key, _ in phases:
        vals = [r[key] for r in recs if r.get(key) is not None]
        s[key] = statistics.median(vals) if vals and len(vals) == len(recs) else None
    return s


def cpu_shares(recs: list[dict]) -> dict:
    """The worker's median CPU seconds per wall second, and other processes' CPU seconds per step second."""
    foreign = [r["foreign_cpu_s"] for r in recs if "foreign_cpu_s" in r]
    return {
        "cpu_per_wall": statistics.median(r["cpu_s"] / r["step_s"] for r in recs),
        "foreign_cpu_share": sum(foreign) / sum(r["step_s"] for r in recs) if foreign else None,
    }


def fmt(x, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def print_phase_table(a: dict, t: dict, phases: Sequence[tuple[str, str]]) -> None:
    """The per-phase medians of anypo (``a``) and TRL (``t``) side by side, with their ratio."""
    print(f"{'phase':<30}{'anypo':>10}{'trl':>10}{'anypo/trl':>11}")
    for key, label in phases:
        ratio = a[key] / t[key] if a[key] is not None and t[key] else None
        print(f"{label:<30}{fmt(a[key]):>10}{fmt(t[key]):>10}{fmt(ratio):>11}")


def warn_foreign_cpu(s: dict) -> None:
    """A warning for each library whose steps shared the machine with other busy processes."""
    for lib in LIBS:
        share = s[lib]["foreign_cpu_share"]
        if share is not None and share > 0.1:
            print(
                f"WARNING: other processes used {share:.2f} CPU-s per second of {lib}'s steps: the machine was "
                "not idle, timings are inflated"
            )
