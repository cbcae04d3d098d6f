"""``anypo compare``: every preset x seed on the same workload, one run directory each, then one report.

The compare process only launches ``anypo train`` subprocesses and reads their files: it never
imports torch, so it adds nothing to the runs' memory or time. Layout of a compare directory::

    <out_dir>/compare-<name>-<timestamp>/
      compare.json          presets, seeds, budget, shared overrides; per run its command, directory, status
      runs/<preset>-s<seed>-<timestamp>/   ordinary run directories (config.json, metrics.jsonl, ...)
      logs/<preset>-s<seed>.log            stdout + stderr of each run (appended on resume)
      report.md, report.html, plots/       written by ``anypo report`` (and at the end of the compare)

Interrupted (Ctrl-C, SIGKILL), ``anypo compare --resume DIR`` keeps finished runs, resumes an
interrupted run from its latest checkpoint (``anypo train --resume``), restarts one that has none
and runs the missing ones.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anypo.errors import UserError
from anypo.runs import read_jsonl

COMPARE_FILE = "compare.json"
BUDGET_FLAGS = {"steps": "--steps", "tokens": "--budget-tokens", "seconds": "--budget-seconds"}
USAGE = """usage: anypo compare PRESET PRESET ... [--seeds 0 1 2] [--budget steps|tokens|seconds N] [--name NAME]
                     [--out-dir runs] [--parallel K] [--threads T] [--smoke] [shared anypo train overrides ...]
       anypo compare --resume COMPARE_DIR

Runs every PRESET with every seed (`anypo train PRESET --seed S ...`, the same overrides for all) into
one compare directory, then writes report.md and report.html there (`anypo report COMPARE_DIR`).
Presets come first; every option compare does not know is passed to each run, e.g.
  anypo compare grpo dr_grpo --seeds 0 1 2 --budget tokens 200000 --steps 1000 --task.name countdown --lr 1e-5

  --seeds S ...       seeds of every preset (default 0 1 2)
  --budget KIND N     the same budget for every run: steps (--steps N), tokens (--budget-tokens N: response
                      tokens generated, every draw counts) or seconds (--budget-seconds N); with tokens or
                      seconds, --steps stays the upper bound
  --name NAME         the compare directory is <out-dir>/compare-<NAME>-<timestamp> (default: the presets)
  --out-dir DIR       where the compare directory is created (default runs)
  --parallel K        K runs at a time (default 1); each gets --threads cores/K unless --threads is given
  --threads T         torch threads of each run
  --smoke             pass --smoke to every run (tiny model, 2 steps: a quick check of the set-up)
  --resume DIR        finish an interrupted compare
"""


class CompareError(UserError):
    """Bad input to ``anypo compare`` / ``anypo report``; ``anypo`` prints it as one line, exit code 2."""


@dataclass
class CompareArgs:
    """The parsed command line of ``anypo compare``."""

    presets: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    budget: tuple[str, float] | None = None
    name: str = ""
    out_dir: str = "runs"
    parallel: int = 1
    threads: int | None = None
    smoke: bool = False
    overrides: list[str] = field(default_factory=list)
    resume: str | None = None


def _value(argv: list[str], i: int, flag: str, what: str) -> str:
    """``argv[i + 1]`` as the value of ``flag``, or a one-line error."""
    if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
        raise CompareError(f"{flag} needs {what}")
    return argv[i + 1]


def _number(text: str, flag: str, kind: type = int) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise CompareError(f"{flag}: {text!r} is not {'an integer' if kind is int else 'a number'}") from None


def parse_args(argv: list[str]) -> CompareArgs:
    """Split ``argv`` into compare's own options and the overrides shared by every run.

    Leading words are presets; after them, the options of USAGE are compare's, and every other token
    (``--lr 1e-5``, ``--task.name countdown``, ...) is passed verbatim to each ``anypo train``.
    """
    args = CompareArgs()
    own = ("--name", "--out-dir", "--parallel", "--threads", "--resume")
    argv = [part for tok in argv for part in (tok.split("=", 1) if tok.split("=", 1)[0] in own else [tok])]
    i = 0
    while i < len(argv) and not argv[i].startswith("-"):
        args.presets.append(argv[i])
        i += 1
    while i < len(argv):
        tok = argv[i]
        if "=" in tok and tok.split("=", 1)[0] in ("--seeds", "--budget"):
            raise CompareError("write --seeds and --budget with spaces, e.g. --seeds 0 1 2 --budget tokens 200000")
        if tok == "--seeds":
            j = i + 1
            seeds = []
            while j < len(argv) and re.fullmatch(r"-?\d+", argv[j]):
                seeds.append(int(argv[j]))
                j += 1
            if not seeds:
                raise CompareError("--seeds needs at least one integer seed, e.g. --seeds 0 1 2")
            if len(set(seeds)) != len(seeds):
                raise CompareError(f"--seeds lists a seed twice: {seeds}")
            args.seeds, i = seeds, j
            continue
        if tok == "--budget":
            kind = _value(argv, i, "--budget", "a kind and a number, e.g. --budget tokens 200000")
            if kind not in BUDGET_FLAGS:
                raise CompareError(f"--budget: kind {kind!r} is not one of steps, tokens, seconds")
            value = _number(_value(argv, i + 1, f"--budget {kind}", "a number"), f"--budget {kind}", float)
            if value <= 0 or (kind != "seconds" and value != int(value)):
                raise CompareError(f"--budget {kind} needs a positive {'number' if kind == 'seconds' else 'integer'}")
            args.budget, i = (kind, int(value) if kind != "seconds" else value), i + 3
            continue
        if tok in ("--name", "--out-dir", "--resume"):
            setattr(args, tok[2:].replace("-", "_"), _value(argv, i, tok, "a value"))
            i += 2
            continue
        if tok in ("--parallel", "--threads"):
            n = _number(_value(argv, i, tok, "an integer"), tok)
            if n < 1:
                raise CompareError(f"{tok} needs an integer >= 1")
            setattr(args, tok[2:], n)
            i += 2
            continue
        if tok == "--smoke":
            args.smoke, i = True, i + 1
            continue
        if tok.split("=", 1)[0] == "--seed":
            raise CompareError("--seed is set per run by compare; give the seeds with --seeds 0 1 2")
        args.overrides.append(tok)
        i += 1
    if args.resume is None:
        _check_new(args)
    return args


def _check_new(args: CompareArgs) -> None:
    """One-line errors for a new compare's arguments (presets are checked against the registry later)."""
    if not args.presets:
        raise CompareError("give at least one preset, e.g. anypo compare grpo dr_grpo --seeds 0 1 2")
    if args.overrides and not args.overrides[0].startswith("-"):
        raise CompareError(f"presets come first: move {args.overrides[0]!r} before the options")
    if len(set(args.presets)) != len(args.presets):
        raise CompareError(f"a preset is listed twice: {args.presets}")
    if args.budget is not None:
        flag = BUDGET_FLAGS[args.budget[0]]
        if any(o == flag or o.startswith(flag + "=") for o in args.overrides):
            raise CompareError(f"{flag} is set by --budget {args.budget[0]}; give it once")


def run_name(preset: str, seed: int) -> str:
    """The run name of one preset x seed; its directory is ``runs/<name>-<timestamp>``."""
    return f"{preset}-s{seed}"


def train_args(args: CompareArgs, preset: str, seed: int) -> list[str]:
    """The ``anypo train`` arguments of one run, without ``--out-dir`` (added at launch)."""
    out = [preset, "--seed", str(seed), "--name", run_name(preset, seed)]
    if args.smoke:
        out.append("--smoke")
    if args.budget is not None:
        kind, value = args.budget
        out += [BUDGET_FLAGS[kind], str(value)]
    if args.threads is not None:
        out += ["--threads", str(args.threads)]
    if not any(o in ("--progress", "--no-progress") for o in args.overrides):
        out.append("--no-progress")  # the log is a file: no progress bar redrawn into it
    return [*out, *args.overrides]


def available_cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_threads(args: CompareArgs, cores: int) -> str | None:
    """Give each of ``parallel`` runs cores // parallel threads unless --threads is set; a warning or None."""
    if args.parallel > 1 and args.threads is None:
        args.threads = max(1, cores // args.parallel)
    if args.threads is not None and args.parallel * args.threads > cores:
        return (
            f"anypo compare: warning: {args.parallel} runs x {args.threads} threads = "
            f"{args.parallel * args.threads} > {cores} cores; runs will slow each other down and "
            "wall-time numbers will not be comparable to a sequential compare"
        )
    return None


# ---- checking presets and overrides before anything runs ----
class _Parsed(BaseException):  # noqa: N818 - a control-flow signal, not an error; BaseException so that no
    """Raised in place of training once ``anypo train`` has resolved its config."""  # `except Exception` eats it


def check_train_args(runs: list[dict[str, Any]]) -> None:
    """Parse every run's ``anypo train`` arguments in one child process (which imports torch, the parent
    does not): an unknown preset or a bad override stops the compare before anything runs."""
    payload = json.dumps([r["args"] for r in runs])
    proc = subprocess.run(
        [sys.executable, "-c", "from anypo.compare import _check_child; _check_child()", payload],
        capture_output=True,
        text=True,
    )
    marker = "ANYPO-CHECK "
    result = next((ln[len(marker) :] for ln in proc.stdout.splitlines() if ln.startswith(marker)), None)
    if result is None:
        tail = (proc.stdout + proc.stderr).strip()[-3000:]
        raise CompareError(f"could not check the runs' arguments (exit {proc.returncode}):\n{tail}")
    res = json.loads(result)
    if res["unknown"]:
        raise CompareError(f"unknown preset {res['unknown'][0]!r}; valid presets: {', '.join(res['valid'])}")
    if res["error"]:
        preset, text = res["error"]
        raise CompareError(f"anypo train rejects the arguments of {preset}:\n{text.strip()}")


def _check_child() -> None:
    """Child side of ``check_train_args``: resolve each run's config with training replaced by a signal."""
    import contextlib
    import importlib
    import io

    from anypo import cli
    from anypo.algorithms import PRESETS

    runs = json.loads(sys.argv[1])
    unknown = sorted({a[0] for a in runs if a[0] not in PRESETS})
    error = None

    def parsed(cfg, resume=None):
        raise _Parsed

    for _config, train_spec in cli.LOOPS.values():  # every loop's train(): cmd_train looks it up at call time
        module, _, name = train_spec.partition(":")
        setattr(importlib.import_module(module), name, parsed)
    for args in [] if unknown else runs:
        buf = io.StringIO()
        try:
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                cli.main(["train", *args])
        except _Parsed:
            continue
        except SystemExit:
            pass
        error = (args[0], buf.getvalue()[-3000:] or "anypo train exited without resolving a config")
        break
    print("ANYPO-CHECK " + json.dumps({"unknown": unknown, "valid": sorted(PRESETS), "error": error}))


# ---- compare directory ----
def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def load_compare(compare_dir: Path) -> dict[str, Any]:
    """compare.json of ``compare_dir``, or a one-line CompareError."""
    path = Path(compare_dir) / COMPARE_FILE
    if not path.is_file():
        raise CompareError(f"{compare_dir} is not a compare directory (no {COMPARE_FILE})")
    return json.loads(path.read_text())


def create(args: CompareArgs, argv: list[str]) -> tuple[Path, dict[str, Any]]:
    """Make ``<out_dir>/compare-<name>-<timestamp>/`` with its compare.json (every run pending)."""
    name = args.name or "-".join(args.presets)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(args.out_dir) / f"compare-{name}-{stamp}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    (path / "runs").mkdir(parents=True)
    (path / "logs").mkdir()
    runs = [
        {
            "preset": p,
            "seed": s,
            "name": run_name(p, s),
            "args": train_args(args, p, s),
            "run_dir": None,
            "log": f"logs/{run_name(p, s)}.log",
            "status": "pending",
            "returncode": None,
            "attempts": 0,
        }
        for p in args.presets
        for s in args.seeds
    ]
    data = {
        "version": 1,
        "name": name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": shlex.join(["anypo", "compare", *argv]),
        "cwd": os.getcwd(),
        "presets": args.presets,
        "seeds": args.seeds,
        "budget": None if args.budget is None else {"kind": args.budget[0], "value": args.budget[1]},
        "smoke": args.smoke,
        "parallel": args.parallel,
        "threads": args.threads,
        "overrides": args.overrides,
        "runs": runs,
    }
    _write_atomic(path / COMPARE_FILE, data)
    return path, data


def train_command(compare_dir: Path, run: dict[str, Any]) -> list[str]:
    """The exact ``anypo train`` argv (after ``anypo``) of a fresh start of ``run``."""
    return ["train", *run["args"], "--out-dir", str((Path(compare_dir) / "runs").resolve())]


# ---- the state of a run on disk ----
def find_run_dir(compare_dir: Path, run: dict[str, Any]) -> Path | None:
    """The run's directory: the recorded one, else the newest ``runs/<name>-<timestamp>`` with a config.json."""
    if run.get("run_dir"):
        p = Path(compare_dir) / run["run_dir"]
        return p if p.is_dir() else None
    pat = re.compile(re.escape(run["name"]) + r"-\d{8}-\d{6}(-\d+)?")
    found = [p for p in (Path(compare_dir) / "runs").glob(run["name"] + "-*") if pat.fullmatch(p.name) and p.is_dir()]
    found = [p for p in found if (p / "config.json").exists()]
    return max(found, key=lambda p: (p.stat().st_mtime, p.name)) if found else None


def reached_end(run_dir: Path) -> bool:
    """True when metrics.jsonl shows the run's last step, or its token / seconds budget reached."""
    try:
        cfg = json.loads((run_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if isinstance(r.get("step"), int) and r["step"] > 0]
    if not rows:
        return False
    if rows[-1]["step"] >= int(cfg.get("steps", 0) or 0) > 0:
        return True
    tokens = [r["rollout/generated_tokens_total"] for r in rows if "rollout/generated_tokens_total" in r]
    if cfg.get("budget_tokens") and tokens and tokens[-1] >= cfg["budget_tokens"]:
        return True
    secs = sum(float(r.get("time/step_s", 0.0)) for r in rows)
    return bool(cfg.get("budget_seconds")) and secs >= float(cfg["budget_seconds"])


def has_checkpoint(run_dir: Path) -> bool:
    """A complete checkpoint exists (``checkpoints/latest`` names a directory with its manifest)."""
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.is_file():
        return False
    return (run_dir / "checkpoints" / pointer.read_text().strip() / "manifest.json").is_file()


def run_state(run_dir: Path | None) -> str:
    """``missing`` (no directory), ``finished`` (final/ exists or the metrics reached the end),
    ``resume`` (a checkpoint to continue from) or ``restart`` (started, but nothing to continue from)."""
    if run_dir is None:
        return "missing"
    if (run_dir / "final").is_dir() or reached_end(run_dir):
        return "finished"
    return "resume" if has_checkpoint(run_dir) else "restart"


# ---- launching ----
def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGKILL when the compare process dies (even by SIGKILL), so that a
    resumed compare never races an orphaned run on the same directory."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass
class _Running:
    index: int
    proc: subprocess.Popen
    log: Any


class Launcher:
    """Runs the pending runs of a compare directory, ``parallel`` at a time, keeping compare.json current."""

    def __init__(self, compare_dir: Path, data: dict[str, Any], parallel: int = 1, poll_s: float = 0.2):
        self.dir, self.data, self.parallel, self.poll_s = Path(compare_dir), data, max(parallel, 1), poll_s
        self.cwd = data.get("cwd") if data.get("cwd") and Path(data["cwd"]).is_dir() else None
        self.prefix = [sys.executable, "-m", "anypo.cli"]  # the `anypo` command (tests put a stand-in here)

    def save(self) -> None:
        _write_atomic(self.dir / COMPARE_FILE, self.data)

    def plan(self) -> list[tuple[int, list[str]]]:
        """(run index, anypo argv) of every run that is not finished; an unusable started dir is set aside."""
        todo = []
        for i, run in enumerate(self.data["runs"]):
            run_dir = find_run_dir(self.dir, run)
            state = run_state(run_dir)
            if run_dir is not None:
                run["run_dir"] = str(run_dir.relative_to(self.dir))
            if state == "finished":
                run["status"] = "finished"
                continue
            if state == "resume":
                todo.append((i, ["train", "--resume", str(run_dir.resolve())]))
                continue
            if state == "restart":  # started but no checkpoint: keep its files aside, start over
                aside = self.dir / "abandoned" / run_dir.name
                aside.parent.mkdir(exist_ok=True)
                os.replace(run_dir, aside)
                run["run_dir"] = None
            todo.append((i, train_command(self.dir, run)))
        self.save()
        return todo

    def start(self, index: int, argv: list[str]) -> _Running:
        run = self.data["runs"][index]
        log = open(self.dir / run["log"], "a")  # noqa: SIM115 - closed when the run ends
        cmd = [*self.prefix, *argv]
        log.write(f"=== {time.strftime('%Y-%m-%dT%H:%M:%S')} anypo {shlex.join(argv)}\n")
        log.flush()
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.cwd,
            process_group=0,  # Ctrl-C reaches the compare only; it forwards one SIGINT to each run
            preexec_fn=_die_with_parent,
        )
        run["status"], run["attempts"], run["pid"] = "running", run.get("attempts", 0) + 1, proc.pid
        if argv[:2] != ["train", "--resume"]:
            run["command"] = shlex.join(["anypo", *argv])  # what the report shows as this run's command
        print(f"anypo compare: [{index + 1}/{len(self.data['runs'])}] started {run['name']}: anypo {shlex.join(argv)}")
        self.save()
        return _Running(index, proc, log)

    def _notice_dir(self, r: _Running) -> None:
        run = self.data["runs"][r.index]
        if not run.get("run_dir"):
            found = find_run_dir(self.dir, run)
            if found is not None:
                run["run_dir"] = str(found.relative_to(self.dir))
                self.save()

    def _finish(self, r: _Running, rc: int) -> bool:
        r.log.close()
        self._notice_dir(r)
        run = self.data["runs"][r.index]
        run.pop("pid", None)
        run_dir = find_run_dir(self.dir, run)
        ok = rc == 0 and run_state(run_dir) == "finished"
        run["status"], run["returncode"] = ("finished" if ok else "failed"), rc
        self.save()
        if ok:
            print(f"anypo compare: finished {run['name']} -> {self.dir / run['run_dir']}")
        else:
            last = _last_line(self.dir / run["log"])
            print(
                f"anypo compare: run {run['name']} FAILED (exit {rc}); log: {self.dir / run['log']}"
                + (f"\n  last line: {last}" if last else ""),
                file=sys.stderr,
            )
        return ok

    def run(self) -> int:
        """Launch every unfinished run; 0 if all finished, 1 if any failed, 130 on Ctrl-C."""
        todo, running, failed = self.plan(), [], 0
        try:
            while todo or running:
                while todo and len(running) < self.parallel:
                    running.append(self.start(*todo.pop(0)))
                time.sleep(self.poll_s)
                for r in list(running):
                    self._notice_dir(r)
                    rc = r.proc.poll()
                    if rc is not None:
                        running.remove(r)
                        failed += not self._finish(r, rc)
        except KeyboardInterrupt:
            self._interrupt(running)
            print(f"\nanypo compare: interrupted; finish it with: anypo compare --resume {self.dir}", file=sys.stderr)
            return 130
        return 1 if failed else 0

    def _interrupt(self, running: list[_Running], grace_s: float = 120.0) -> None:
        """Forward one SIGINT (each run saves its last complete step), wait, then kill what is left."""
        for r in running:
            if r.proc.poll() is None:
                r.proc.send_signal(signal.SIGINT)
        deadline = time.time() + grace_s
        for r in running:
            try:
                r.proc.wait(timeout=max(deadline - time.time(), 0.1))
            except subprocess.TimeoutExpired:
                r.proc.kill()
                r.proc.wait()
            r.log.close()
            self._notice_dir(r)
            run = self.data["runs"][r.index]
            run.pop("pid", None)
            run["status"], run["returncode"] = "interrupted", r.proc.returncode
        self.save()


def _last_line(path: Path) -> str:
    """The last non-empty line of a log (usually the error)."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


class _Lock:
    """An exclusive lock on a compare directory, so that two compares never run the same runs."""

    def __init__(self, compare_dir: Path):
        self.path = Path(compare_dir) / ".lock"

    def __enter__(self) -> _Lock:
        import fcntl

        self.f = open(self.path, "w")  # noqa: SIM115 - held for the with-block
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.f.close()
            raise CompareError(f"another anypo compare is running on {self.path.parent}") from None
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()


def main(argv: list[str]) -> int:
    """``anypo compare``: returns the exit code (0 all runs finished, 1 some failed, 2 bad input, 130 Ctrl-C)."""
    if not argv or "-h" in argv or "--help" in argv:
        print(USAGE)
        return 0 if argv else 2
    args = parse_args(argv)
    parallel_given = any(a == "--parallel" or a.startswith("--parallel=") for a in argv)
    if args.resume is not None:
        if args.presets or args.overrides or len(argv) > 2 + 2 * parallel_given:
            raise CompareError("--resume takes the compare directory only (and --parallel K if you want)")
        compare_dir = Path(args.resume)
        data = load_compare(compare_dir)
        parallel = args.parallel if parallel_given else data.get("parallel", 1)
    else:
        warning = resolve_threads(args, available_cores())
        if warning:
            print(warning, file=sys.stderr)
        probe = [{"args": train_args(args, p, s)} for p in args.presets for s in args.seeds[:1]]
        try:
            check_train_args(probe)
        except KeyboardInterrupt:
            print("\nanypo compare: interrupted before any run started", file=sys.stderr)
            return 130
        compare_dir, data = create(args, argv)
        parallel = args.parallel
        print(f"anypo compare: {len(data['runs'])} runs into {compare_dir}")
    with _Lock(compare_dir):
        rc = Launcher(compare_dir, data, parallel).run()
    if rc == 130:
        return rc
    done = sum(r["status"] == "finished" for r in data["runs"])
    print(f"anypo compare: {done}/{len(data['runs'])} runs finished")
    from anypo.report import render

    try:
        out = render([compare_dir])
    except Exception as e:  # the runs are done and kept; only the report is missing
        print(f"anypo compare: the report failed ({type(e).__name__}: {e}); retry with: anypo report {compare_dir}")
        return rc or 1
    print(f"anypo compare: report: {out / 'report.md'} and {out / 'report.html'}")
    return rc
