"""`anypo compare` / `anypo report` without torch: statistics by hand, launching stand-in runs, reports
of hand-written metrics.jsonl files.

Student-t values come from the closed forms of the t CDF for 1, 2 and 4 degrees of freedom and from
published tables (t_{0.975,1} = 12.706, t_{0.975,2} = 4.303, t_{0.975,4} = 2.776, t_{0.975,10} = 2.228).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anypo import compare, report, stats
from anypo.compare import CompareArgs, CompareError, Launcher, parse_args, run_state, train_args


# ---------------------------------------------------------------- statistics
@pytest.mark.parametrize(
    ("p", "df", "table"),
    [(0.975, 1, 12.706), (0.975, 2, 4.303), (0.975, 4, 2.776), (0.975, 10, 2.228), (0.975, 30, 2.042),
     (0.95, 5, 2.015), (0.995, 3, 5.841)],
)  # fmt: skip
def test_t_quantiles_match_published_table(p, df, table):
    """Student-t quantiles as printed in standard tables (3 decimals)."""
    assert stats.t_ppf(p, df) == pytest.approx(table, abs=6e-4)
    assert stats.t_ppf(1 - p, df) == pytest.approx(-table, abs=6e-4)


@pytest.mark.parametrize("t", [-3.0, -0.5, 0.0, 0.7, 2.0, 9.0])
def test_t_cdf_closed_forms(t):
    """df = 1 (Cauchy): F(t) = 1/2 + atan(t)/pi.  df = 2: F(t) = 1/2 + t / (2 sqrt(2 + t^2)).
    df = 4: F(t) = 1/2 + (3/4)(u - u^3/3) with u = t / sqrt(4 + t^2)."""
    assert stats.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
    assert stats.t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)
    u = t / math.sqrt(4 + t * t)
    assert stats.t_cdf(t, 4) == pytest.approx(0.5 + 0.75 * (u - u**3 / 3), abs=1e-12)


def test_betainc_identities():
    """I_x(1, 1) = x;  I_x(a, 1) = x^a;  I_x(1, b) = 1 - (1 - x)^b;  I_{1/2}(a, a) = 1/2;  I_0 = 0, I_1 = 1."""
    for x in (0.0, 0.1, 0.5, 0.93, 1.0):
        assert stats.betainc(1, 1, x) == pytest.approx(x, abs=1e-13)
        assert stats.betainc(3.5, 1, x) == pytest.approx(x**3.5, abs=1e-13)
        assert stats.betainc(1, 2.5, x) == pytest.approx(1 - (1 - x) ** 2.5, abs=1e-13)
    assert stats.betainc(7.3, 7.3, 0.5) == pytest.approx(0.5, abs=1e-13)
    with pytest.raises(ValueError):
        stats.betainc(1, 1, 1.5)


def test_agrees_with_scipy_where_installed():
    sp = pytest.importorskip("scipy.stats", reason="scipy not installed: the table and closed-form tests stand")
    for df in (1, 2.5, 7, 40.3):
        assert stats.t_ppf(0.975, df) == pytest.approx(sp.t.ppf(0.975, df), rel=1e-9)
        assert stats.t_cdf(1.3, df) == pytest.approx(sp.t.cdf(1.3, df), rel=1e-9)


def test_mean_ci_by_hand():
    """[0.24, 0.34, 0.44]: mean 0.34, sd 0.1, half-width t_{0.975,2} * 0.1 / sqrt(3) = 4.302653 * 0.057735
    = 0.248414 -> [0.091586, 0.588414]. One value: no interval. None / nan are dropped."""
    s = stats.mean_ci([0.24, 0.34, 0.44])
    assert (s.n, s.mean, s.sd) == (3, pytest.approx(0.34), pytest.approx(0.1))
    assert (s.lo, s.hi) == (pytest.approx(0.091586, abs=1e-6), pytest.approx(0.588414, abs=1e-6))
    one = stats.mean_ci([0.5, None, float("nan")])
    assert (one.n, one.mean, one.lo, one.hi) == (1, 0.5, None, None)
    assert stats.mean_ci([]).n == 0


def test_trailing_mean_by_hand():
    """Window 3 over 1, 2, 6, 3: 1/1, (1+2)/2 = 1.5, (1+2+6)/3 = 3, (2+6+3)/3 = 11/3; window 1 is the identity."""
    assert stats.trailing_mean([1.0, 2.0, 6.0, 3.0], 3) == pytest.approx([1.0, 1.5, 3.0, 11 / 3])
    assert stats.trailing_mean([4.0, 5.0], 1) == [4.0, 5.0]
    assert stats.trailing_mean([], 3) == []


def test_welch_by_hand():
    """a = [1, 2, 3], b = [4, 5, 6]: means 2 and 5, variances 1 and 1, se^2 = 1/3 + 1/3, se = 0.816497;
    df = (2/3)^2 / ((1/3)^2/2 + (1/3)^2/2) = 4; interval 3 +- 2.776445 * 0.816497 = [0.733042, 5.266958];
    t = 3 / 0.816497 = 3.674235, u = t / sqrt(4 + t^2) = 0.878310,
    p = 2 (1 - F_4(t)) = 2 (1/2 - (3/4)(u - u^3/3)) = 0.021312 -> higher."""
    w = stats.welch([1, 2, 3], [4, 5, 6])
    assert w.diff == pytest.approx(3.0)
    assert w.df == pytest.approx(4.0)
    assert (w.lo, w.hi) == (pytest.approx(0.733042, abs=1e-5), pytest.approx(5.266958, abs=1e-5))
    t = 3 / math.sqrt(2 / 3)
    u = t / math.sqrt(4 + t * t)
    assert w.p == pytest.approx(2 * (0.5 - 0.75 * (u - u**3 / 3)), rel=1e-9)
    assert w.p == pytest.approx(0.021312, abs=1e-6)
    assert w.distinguishable is True and report.reading(w) == "higher"


def test_welch_unequal_variances_and_readings():
    """a = [1, 2, 3] (var 1), b = [4, 5, 6, 7] (var 5/3): se^2 = 1/3 + 5/12 = 3/4;
    df = (3/4)^2 / ((1/3)^2/2 + (5/12)^2/3) = 0.5625 / (0.0555556 + 0.0578704) = 4.959184.
    b = [1.5, 2.5, 1] vs a: diff 1.6667 - 2 = -0.3333, the interval holds 0: not distinguishable."""
    w = stats.welch([1, 2, 3], [4, 5, 6, 7])
    assert w.diff == pytest.approx(3.5)
    assert w.df == pytest.approx(4.959184, abs=1e-5)
    assert (w.hi - w.lo) / 2 == pytest.approx(stats.t_ppf(0.975, w.df) * math.sqrt(0.75))
    same = stats.welch([1, 2, 3], [1.5, 2.5, 1])
    assert same.lo < 0 < same.hi and report.reading(same) == "not distinguishable"
    small = stats.welch([1, 2, 3], [4])
    assert small.lo is None and small.p is None and report.reading(small) == "n too small"
    flat = stats.welch([1, 1], [2, 2])
    assert flat.p is None and report.reading(flat) == "zero variance" and flat.distinguishable is None


# ---------------------------------------------------------------- command line
def test_parse_args_splits_own_options_from_shared_overrides():
    a = parse_args(
        ["grpo", "dr_grpo", "--seeds", "0", "1", "--task.name", "countdown", "--budget", "tokens", "20000",
         "--lr", "1e-5", "--parallel=2", "--name", "x", "--smoke", "--out-dir", "/tmp/o"]
    )  # fmt: skip
    assert a.presets == ["grpo", "dr_grpo"] and a.seeds == [0, 1]
    assert a.budget == ("tokens", 20000) and a.parallel == 2 and a.name == "x" and a.smoke
    assert a.out_dir == "/tmp/o" and a.overrides == ["--task.name", "countdown", "--lr", "1e-5"]
    assert parse_args(["grpo"]).seeds == [0, 1, 2]
    assert parse_args(["--resume", "d"]).resume == "d"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["grpo", "--budget", "flops", "3"], "not one of steps, tokens, seconds"),
        (["grpo", "--budget", "steps", "2.5"], "positive integer"),
        (["grpo", "--seeds", "--lr", "1"], "at least one integer seed"),
        (["grpo", "--seed", "3"], "--seeds"),
        (["--lr", "1e-5"], "at least one preset"),
        (["grpo", "--lr", "1e-5", "dapo", "x"], None),  # a stray word is left for anypo train to reject
        (["grpo", "grpo"], "listed twice"),
        (["grpo", "--budget", "steps", "5", "--steps", "9"], "--steps is set by --budget steps"),
        (["grpo", "--parallel", "0"], ">= 1"),
    ],
)
def test_parse_args_errors_are_one_line(argv, message):
    if message is None:
        assert parse_args(argv).overrides == ["--lr", "1e-5", "dapo", "x"]
        return
    with pytest.raises(CompareError) as e:
        parse_args(argv)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_train_args_map_the_budget_and_keep_overrides_last():
    base = dict(presets=["grpo"], overrides=["--lr", "1e-5"], smoke=True, threads=1)
    for kind, value, flag in (
        ("steps", 7, "--steps"),
        ("tokens", 900, "--budget-tokens"),
        ("seconds", 1.5, "--budget-seconds"),
    ):
        args = train_args(CompareArgs(**base, budget=(kind, value)), "grpo", 3)
        assert args[:5] == ["grpo", "--seed", "3", "--name", "grpo-s3"]
        assert args[args.index(flag) + 1] == str(value) and "--smoke" in args
        assert args[-2:] == ["--lr", "1e-5"] and "--no-progress" in args
        assert args.index("--smoke") < args.index(flag)  # options after --smoke win over its settings
    assert "--no-progress" not in train_args(CompareArgs(presets=["grpo"], overrides=["--progress"]), "grpo", 0)


def test_threads_per_run_fit_the_cores():
    a = CompareArgs(presets=["grpo"], parallel=2)
    assert compare.resolve_threads(a, 8) is None and a.threads == 4
    b = CompareArgs(presets=["grpo"], parallel=3, threads=2)
    assert "3 runs x 2 threads = 6 > 4 cores" in compare.resolve_threads(b, 4)
    c = CompareArgs(presets=["grpo"], parallel=1)
    assert compare.resolve_threads(c, 2) is None and c.threads is None  # sequential: the runs' own default


def test_cli_errors_are_one_line(tmp_path, capsys):
    from anypo import cli

    assert cli.main(["compare", "grpo", "--budget", "flops", "1"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert cli.main(["compare", "--resume", str(tmp_path)]) == 2
    assert "is not a compare directory" in capsys.readouterr().err
    assert cli.main(["compare", "--resume", str(tmp_path), "--lr", "1"]) == 2
    assert "--resume takes the compare directory only" in capsys.readouterr().err
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "neither a compare directory" in err and err.strip().count("\n") == 0


# ---------------------------------------------------------------- run directories on disk
def write_run(
    root: Path, preset: str, seed: int, rows: list[dict], cfg: dict | None = None, final: bool = True
) -> Path:
    """A run directory as `anypo train` leaves it, with the given metrics rows."""
    d = root / f"{preset}-s{seed}-20260101-000000"
    d.mkdir(parents=True)
    config = {"_type": "TrainConfig", "preset": preset, "name": f"{preset}-s{seed}", "seed": seed, "steps": 6}
    config.update(cfg or {})
    (d / "config.json").write_text(json.dumps(config))
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if final:
        (d / "final").mkdir()
    return d


def test_run_state(tmp_path):
    assert run_state(None) == "missing"
    done = write_run(tmp_path / "a", "grpo", 0, [{"step": 1}], final=True)
    assert run_state(done) == "finished"
    by_steps = write_run(tmp_path / "b", "grpo", 0, [{"step": 5}, {"step": 6}], final=False)
    assert run_state(by_steps) == "finished"  # metrics reached steps = 6 (killed during export)
    by_tokens = write_run(
        tmp_path / "c", "grpo", 0, [{"step": 2, "rollout/generated_tokens_total": 1000}], {"budget_tokens": 900}, False
    )
    assert run_state(by_tokens) == "finished"
    ckpt = write_run(tmp_path / "d", "grpo", 0, [{"step": 2}], final=False)
    (ckpt / "checkpoints" / "step_000002").mkdir(parents=True)
    (ckpt / "checkpoints" / "latest").write_text("step_000002\n")
    assert run_state(ckpt) == "restart"  # no manifest.json: an incomplete checkpoint is not resumable
    (ckpt / "checkpoints" / "step_000002" / "manifest.json").write_text("{}")
    assert run_state(ckpt) == "resume"
    (ckpt / "metrics.jsonl").write_text('{"step": 1}\n{"step": 6, "rew')  # a line cut by SIGKILL
    assert run_state(ckpt) == "resume"


FAKE_TRAIN = r'''
"""Stands in for `anypo train`: writes a run directory; preset "broken" fails; logs what it was asked."""
import json, os, signal, sys, time
from pathlib import Path

argv = sys.argv[1:]
signal.signal(signal.SIGINT, lambda *a: (print("fake: got SIGINT, saved"), sys.exit(130)))
with open(os.environ["FAKE_LOG"], "a") as f:  # written once the handler is in place
    f.write(json.dumps({"argv": argv, "start": time.time()}) + "\n")
if argv[1] == "--resume":
    d = Path(argv[2])
else:
    get = lambda flag: argv[argv.index(flag) + 1]
    if argv[1] == "broken":
        print("ValueError: reward function exploded")
        sys.exit(3)
    d = Path(get("--out-dir")) / (get("--name") + "-20260101-000000")
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"preset": argv[1], "seed": int(get("--seed")), "steps": 2}))
time.sleep(float(os.environ.get("FAKE_SLEEP", "0.3")))
(d / "metrics.jsonl").write_text('{"step": 1, "reward/mean": 0.5}\n{"step": 2, "reward/mean": 0.5}\n')
(d / "final").mkdir(exist_ok=True)
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps({"argv": argv, "end": time.time()}) + "\n")
print("run directory:", d)
'''


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """(make a compare dir of presets x seeds, run it with the stand-in, read the stand-in's log)."""
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    log = tmp_path / "fake.jsonl"
    monkeypatch.setenv("FAKE_LOG", str(log))

    def make(presets, seeds, **kw):
        args = CompareArgs(presets=presets, seeds=seeds, out_dir=str(tmp_path / "out"), **kw)
        return compare.create(args, ["grpo", "..."])

    def launch(d, data, parallel=1):
        launcher = Launcher(d, data, parallel, poll_s=0.02)
        launcher.prefix = [sys.executable, str(script)]
        return launcher.run()

    def entries():
        return [json.loads(ln) for ln in log.read_text().splitlines()] if log.exists() else []

    return make, launch, entries


def test_launch_continues_after_a_failure_and_reports_its_log(fake, capsys):
    make, launch, entries = fake
    d, data = make(["grpo", "broken", "dapo"], [0])
    assert launch(d, data) == 1
    err = capsys.readouterr().err
    log = d / "logs" / "broken-s0.log"
    assert f"run broken-s0 FAILED (exit 3); log: {log}" in err and "reward function exploded" in err
    assert "reward function exploded" in log.read_text()
    saved = json.loads((d / "compare.json").read_text())
    assert [r["status"] for r in saved["runs"]] == ["finished", "failed", "finished"]
    assert saved["runs"][0]["run_dir"] == "runs/grpo-s0-20260101-000000"
    assert [e["argv"][1] for e in entries() if "start" in e] == ["grpo", "broken", "dapo"]  # in order


def test_parallel_runs_k_at_a_time(fake, monkeypatch):
    """4 runs of 1 s with parallel=2: at most 2 overlap at any time, and some do."""
    make, launch, entries = fake
    monkeypatch.setenv("FAKE_SLEEP", "1.0")
    d, data = make(["grpo", "dapo"], [0, 1])
    assert launch(d, data, parallel=2) == 0
    name = lambda argv: argv[argv.index("--name") + 1]
    starts = {name(e["argv"]): e["start"] for e in entries() if "start" in e}
    ends = {name(e["argv"]): e["end"] for e in entries() if "end" in e}
    assert len(starts) == len(ends) == 4
    overlap = max(sum(starts[o] <= starts[n] < ends[o] for o in starts) for n in starts)
    assert overlap == 2


def test_resume_keeps_finished_resumes_restarts_and_runs_missing(fake):
    make, launch, entries = fake
    d, data = make(["grpo", "dapo"], [0, 1])
    assert launch(d, data) == 0
    runs = {r["name"]: d / r["run_dir"] for r in json.loads((d / "compare.json").read_text())["runs"]}
    # grpo-s0 finished; grpo-s1 interrupted after a checkpoint; dapo-s0 started, no checkpoint; dapo-s1 never ran
    os.rename(runs["grpo-s1"] / "final", d / "x")
    (runs["grpo-s1"] / "metrics.jsonl").write_text('{"step": 1}\n')
    (runs["grpo-s1"] / "checkpoints" / "step_000001").mkdir(parents=True)
    (runs["grpo-s1"] / "checkpoints" / "step_000001" / "manifest.json").write_text("{}")
    (runs["grpo-s1"] / "checkpoints" / "latest").write_text("step_000001\n")
    os.rename(runs["dapo-s0"] / "final", d / "y")
    (runs["dapo-s0"] / "metrics.jsonl").write_text("")
    os.rename(runs["dapo-s1"], d / "z")
    before = len(entries())
    data = compare.load_compare(d)
    for r in data["runs"]:
        if r["name"] == "dapo-s1":
            r["run_dir"] = None  # as if killed before the directory was recorded
    assert launch(d, data) == 0
    again = [e["argv"] for e in entries()[before:] if "start" in e]
    assert again == [
        ["train", "--resume", str(runs["grpo-s1"].resolve())],
        compare.train_command(d, data["runs"][2]),
        compare.train_command(d, data["runs"][3]),
    ]
    assert (d / "abandoned" / runs["dapo-s0"].name).is_dir()  # set aside, not deleted
    saved = json.loads((d / "compare.json").read_text())
    assert all(r["status"] == "finished" for r in saved["runs"])
    assert "--resume" in (d / "logs" / "grpo-s1.log").read_text()


def test_interrupt_forwards_one_sigint_and_marks_runs(fake, monkeypatch):
    make, launch, entries = fake
    monkeypatch.setenv("FAKE_SLEEP", "30")
    d, data = make(["grpo"], [0])
    launcher = Launcher(d, data, 1, poll_s=0.02)
    launcher.prefix = [sys.executable, str(d.parent.parent / "fake_train.py")]
    running = launcher.start(0, compare.train_command(d, data["runs"][0]))
    deadline = time.time() + 20
    while not entries() and time.time() < deadline:
        time.sleep(0.05)
    launcher._interrupt([running], grace_s=20)
    saved = json.loads((d / "compare.json").read_text())
    assert saved["runs"][0]["status"] == "interrupted" and saved["runs"][0]["returncode"] == 130
    assert "got SIGINT" in (d / "logs" / "grpo-s0.log").read_text()


def test_a_second_compare_on_the_same_dir_is_refused(fake):
    make, _, _ = fake
    d, _ = make(["grpo"], [0])
    with compare._Lock(d), pytest.raises(CompareError, match="another anypo compare is running"), compare._Lock(d):
        pass


# ---------------------------------------------------------------- the report's numbers
def synthetic_rows(seed: int, reward_base: float, pass1: float, step_s: float, kl: bool, tokens: str) -> list[dict]:
    """6 steps: reward/mean = base + 0.1 seed + 0.01 t, length 10 + t, entropy 1 - 0.1 seed, 100 tokens per
    step, peak RSS 1 + 0.1 t; evaluations at steps 0 and 3 (pass1 - 0.1) and 6 (pass1 + 0.1 seed; pass@4 0.5)."""
    rows = [{"step": 0, "eval/pass@1": 0.0, "eval/pass@4": 0.1}]
    for t in range(1, 7):
        r = {
            "step": t,
            "reward/mean": reward_base + 0.1 * seed + 0.01 * t,
            "response/length_mean": 10.0 + t,
            "policy/entropy": 1.0 - 0.1 * seed,
            "time/step_s": step_s,
            "memory/peak_rss_gb": 1.0 + 0.1 * t,
            "rollout/generated_tokens": 100.0,
        }
        if tokens == "total":
            r["rollout/generated_tokens_total"] = 100.0 * t
        if kl:
            r["kl/ref"] = 0.01 * seed
        if t in (3, 6):
            r["eval/pass@1"] = pass1 - 0.1 if t == 3 else pass1 + 0.1 * seed
            r["eval/pass@4"] = 0.5
        rows.append(r)
    return rows


def write_synthetic_compare(tmp_path: Path) -> Path:
    """grpo (seeds 0-2), dr_grpo (seeds 0-2), sapo (seed 0) in a compare directory written by hand."""
    d = tmp_path / "compare-x"
    specs = []
    for preset, seeds, base, pass1 in (
        ("grpo", [0, 1, 2], 0.2, 0.1),
        ("dr_grpo", [0, 1, 2], 0.2, 0.4),
        ("sapo", [0], 0.3, 0.2),
    ):
        for s in seeds:
            step_s = 2.0 if preset == "grpo" else 1.0 + 0.5 * s
            rows = synthetic_rows(
                s, base, pass1, step_s, kl=preset == "grpo", tokens="total" if preset == "grpo" else "per_step"
            )
            run = write_run(d / "runs", preset, s, rows, {"task": {"name": "addition"}, "model": {"name": "tiny"}})
            specs.append({"preset": preset, "seed": s, "name": f"{preset}-s{s}", "args": [preset, "--seed", str(s)],
                          "run_dir": str(run.relative_to(d)), "log": f"logs/{preset}-s{s}.log", "status": "finished"})  # fmt: skip
    data = {"name": "x", "command": "anypo compare grpo dr_grpo sapo --seeds 0 1 2", "cwd": str(tmp_path),
            "presets": ["grpo", "dr_grpo", "sapo"], "seeds": [0, 1, 2], "budget": {"kind": "steps", "value": 6},
            "overrides": ["--lr", "1e-5"], "runs": specs}  # fmt: skip
    (d / "compare.json").write_text(json.dumps(data))
    return d


@pytest.fixture
def synthetic_compare(tmp_path) -> Path:
    return write_synthetic_compare(tmp_path)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[Path, str, str]:
    """The synthetic compare rendered once: (its directory, report.md, report.html)."""
    out = report.render([write_synthetic_compare(tmp_path_factory.mktemp("rendered"))])
    return out, (out / "report.md").read_text(), (out / "report.html").read_text()


def md_table(md: str, heading: str) -> dict[str, dict[str, str]]:
    """The first table after ``heading`` in report.md, as {first cell: {column: cell}}."""
    lines = md[md.index(heading) :].splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    rows = []
    for ln in lines[start:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", ln.strip())[1:-1]])
    header, body = rows[0], rows[2:]
    return {r[0]: dict(zip(header, r, strict=True)) for r in body}


def test_report_numbers_by_hand(rendered):
    """Final reward of a run = mean of reward/mean over steps 2..6 = base + 0.1 seed + 0.04.
    grpo: [0.24, 0.34, 0.44] -> 0.340 [0.092, 0.588] (half-width 4.302653 * 0.1 / sqrt 3 = 0.248414).
    grpo final pass@1 (step 6) = 0.1 + 0.1 seed = [0.1, 0.2, 0.3] -> 0.200 [-0.048, 0.448]; pass@4 0.5 flat.
    grpo KL [0, 0.01, 0.02] -> 0.0100 [-0.0148, 0.0348]; dr_grpo logs no KL -> n/a.
    dr_grpo wall time 6 (1 + 0.5 seed) = [6, 9, 12] -> 9.0 [1.5, 16.5] (9 -+ 4.302653 * 3 / sqrt 3 = 7.4524).
    Tokens: grpo's logged total 600; dr_grpo logs only per-step tokens: 6 x 100 = 600.
    Length: mean of 12..16 = 14. Entropy [1.0, 0.9, 0.8] -> 0.900 [0.652, 1.148]. Peak RSS max = 1.6.
    sapo, one seed: reward 0.3 + 0.04 = 0.340 (n=1)."""
    md = rendered[1]
    t, cost = md_table(md, "## Results per method"), md_table(md, "## Cost per method")
    for name, row in t.items():
        row.update(cost[name])
    g, dr, sa = t["`grpo`"], t["`dr_grpo`"], t["`sapo`"]
    assert g["seeds"] == "3 (0, 1, 2)" and sa["seeds"] == "1 (0)"
    assert g["reward (last 5)"] == "0.340 [0.092, 0.588]"
    assert g["held-out pass@1"] == "0.200 [-0.048, 0.448]"
    assert g["held-out pass@4"] == "0.500 [0.500, 0.500]"
    assert g["KL to ref (last 5)"] == "0.0100 [-0.0148, 0.0348]" and dr["KL to ref (last 5)"] == "n/a"
    assert (
        dr["wall time s (sum of steps)"] == "9.0 [1.5, 16.5]" and g["wall time s (sum of steps)"] == "12.0 [12.0, 12.0]"
    )
    assert g["tokens generated"] == dr["tokens generated"] == "600 [600, 600]"
    assert g["length (last 5)"] == "14.0 [14.0, 14.0]"
    assert g["entropy (last 5)"] == "0.900 [0.652, 1.148]"
    assert g["peak RSS GB"] == "1.60 [1.60, 1.60]"
    assert sa["reward (last 5)"] == "0.340 (n=1)"


def test_pairwise_table_and_verdict_by_hand(rendered):
    """dr_grpo - grpo, final pass@1: [0.4, 0.5, 0.6] - [0.1, 0.2, 0.3] = +0.3, se = sqrt(0.01/3 * 2) = 0.081650,
    df = 4: interval 0.3 -+ 2.776445 * 0.081650 = [+0.073, +0.527], p = 0.0213 -> higher.
    Final reward: identical -> +0.000, [-0.227, +0.227], p = 1 -> not distinguishable.
    sapo has one seed -> n too small."""
    md = rendered[1]
    lines = [ln for ln in md.splitlines() if ln.startswith("| `dr_grpo` - `grpo`") or ln.startswith("| `sapo`")]
    cells = [[c.strip() for c in ln.split("|")[1:-1]] for ln in lines]
    by = {(c[0], c[1]): c for c in cells}
    p1 = by[("`dr_grpo` - `grpo`", "held-out pass@1")]
    assert p1[2:] == ["+0.300", "[+0.073, +0.527]", "0.0213", "3 vs 3", "higher"]
    rw = by[("`dr_grpo` - `grpo`", "reward (last 5 steps)")]
    assert rw[2:] == ["+0.000", "[-0.227, +0.227]", "1", "3 vs 3", "not distinguishable"]
    assert by[("`sapo` - `grpo`", "held-out pass@1")][-1] == "n too small"
    verdict = md[md.index("## Verdict") : md.index("## Curves")]
    assert "`dr_grpo` is **higher** than `grpo` on held-out pass@1 by 0.300" in verdict
    assert "`dr_grpo` and `grpo` are **not distinguishable** on reward (last 5 steps)" in verdict
    assert "too few seeds" in verdict and "without a correction for multiple comparisons" in verdict


def test_report_lists_runs_reproduce_commands_and_plots(rendered):
    out, md, _ = rendered
    assert "anypo compare grpo dr_grpo sapo --seeds 0 1 2" in md
    assert md.count("anypo train grpo --seed") == 3
    keys = ("final", "reward_mean", "eval_pass_at_1", "eval_pass_at_4", "policy_entropy", "response_length_mean")
    for key in (*keys, "kl_ref"):
        assert (out / "plots" / f"{key}.png").stat().st_size > 1000
        assert f"(plots/{key}.png)" in md
    assert "Workload of every run: task `addition`, model `tiny`" in md


def test_html_is_self_contained(rendered):
    html = rendered[2]
    # the end-of-run dots (final.png), the 5 fixed curves and held-out pass@4
    assert html.count('src="data:image/png;base64,') == 7
    assert "<script" not in html and not re.search(r"(src|href)=\"(https?:)?//", html) and "@import" not in html
    assert "<th>held-out pass@1</th>" in html and "<code>grpo</code>" in html


def test_single_run_report(tmp_path):
    run = write_run(tmp_path, "grpo", 0, synthetic_rows(0, 0.2, 0.1, 2.0, kl=False, tokens="total"))
    assert report.main([str(run)]) == 0
    md = (run / "report.md").read_text()
    t = md_table(md, "## Results per method")
    assert t["`grpo`"]["reward (last 5)"] == "0.240 (n=1)"
    assert "One method only" in md and (run / "report.html").is_file()


def test_unfinished_runs_are_listed_not_counted(synthetic_compare):
    d = synthetic_compare
    data = json.loads((d / "compare.json").read_text())
    (d / data["runs"][1]["run_dir"] / "final").rmdir()
    (d / data["runs"][1]["run_dir"] / "metrics.jsonl").write_text('{"step": 1, "reward/mean": 9.0}\n')
    md = (report.render([d]) / "report.md").read_text()
    assert md_table(md, "## Results per method")["`grpo`"]["seeds"] == "2 (0, 2)"
    assert "(not in the statistics)" in md_table(md, "## Runs")["grpo-s1"]["state"]


def test_merge_rows_and_token_axis():
    """An evaluation logged in its own row joins its step; tokens: the logged total, else the running sum."""
    rows = report.merge_rows([{"step": 0, "eval/pass@1": 0.1}, {"step": 1, "reward/mean": 1.0},
                              {"step": 1, "eval/pass@1": 0.2}, {"step": 2, "reward/mean": 2.0}])  # fmt: skip
    assert rows == [{"step": 0, "eval/pass@1": 0.1}, {"step": 1, "reward/mean": 1.0, "eval/pass@1": 0.2},
                    {"step": 2, "reward/mean": 2.0}]  # fmt: skip
    per_step = [{"step": 0}, {"step": 1, "rollout/generated_tokens": 30}, {"step": 2, "rollout/generated_tokens": 50}]
    assert report.token_axis(per_step) == [0.0, 30.0, 80.0]
    assert report.token_axis([{"step": 1, "rollout/generated_tokens_total": 500}]) == [500.0]
    assert report.token_axis([{"step": 1, "reward/mean": 1}]) == [None]


def test_curve_by_tokens_interpolates_within_each_seed():
    """Seed 0: tokens (0, 100, 200) -> reward (0, 1, 2); seed 1: tokens (0, 100) -> (2, 2). Grid of 3 points
    on [0, 200]: at 0 mean(0, 2) = 1; at 100 mean(1, 2) = 1.5; at 200 only seed 0 (no extrapolation): 2, no band.
    With 5 points, x = 50: seed 0 interpolates to 0.5, seed 1 to 2 -> 1.25."""

    def run(seed, pts):
        rows = [{"step": i, "rollout/generated_tokens_total": x, "reward/mean": y} for i, (x, y) in enumerate(pts)]
        return report.Run(Path(f"r{seed}"), "grpo", seed, {}, rows)

    rs = [run(0, [(0, 0), (100, 1), (200, 2)]), run(1, [(0, 2), (100, 2)])]
    xs, (mean, lo, hi, n) = report.curve_by_tokens(rs, "reward/mean", points=3)
    assert xs == [0, 100, 200] and mean == [1.0, 1.5, 2.0] and n == [2, 2, 1]
    assert math.isnan(lo[2]) and lo[0] < 1.0 < hi[0]
    xs5, (mean5, *_) = report.curve_by_tokens(rs, "reward/mean", points=5)
    assert xs5[1] == 50 and mean5[1] == pytest.approx(1.25)


def test_report_and_compare_parent_never_import_torch(synthetic_compare):
    """The compare process only launches and reads: neither `anypo report` nor the compare modules load torch."""
    code = (
        "import sys; from anypo import cli, compare, report; "
        f"rc = cli.main(['report', {str(synthetic_compare)!r}]); "
        "assert rc == 0, rc; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_check_child_rejects_unknown_preset_listing_valid_ones():
    """Runs one child process that imports the presets (the parent does not)."""
    with pytest.raises(CompareError) as e:
        compare.check_train_args([{"args": ["grpoo", "--seed", "0"]}])
    msg = str(e.value)
    assert msg.startswith("unknown preset 'grpoo'; valid presets:") and "grpo" in msg and "dr_grpo" in msg


def test_check_child_rejects_bad_override():
    with pytest.raises(CompareError) as e:
        compare.check_train_args([{"args": ["grpo", "--seed", "0", "--stpes", "3"]}])
    assert "rejects the arguments of grpo" in str(e.value) and "--stpes" in str(e.value)


def test_check_child_resolves_every_loop_without_training(tmp_path):
    """The argument check stops every loop's train() (online, preference, online preference) before
    anything runs: no run directory appears, and a bad override of a preference preset is reported."""
    out = tmp_path / "runs"
    compare.check_train_args(
        [{"args": [p, "--seed", "0", "--smoke", "--out-dir", str(out)]} for p in ("grpo", "dpo", "online_dpo")]
    )
    assert not out.exists()
    with pytest.raises(CompareError) as e:
        compare.check_train_args([{"args": ["sppo", "--seed", "0", "--oracle.kindd", "x"]}])
    assert "rejects the arguments of sppo" in str(e.value)


def test_report_of_run_directories_from_any_loop(tmp_path):
    """Run directories outside a compare (say a preference loop's, labelled by its name) go in one report;
    several need --out. Rewards: 0.2 + 0.04 = 0.240 (grpo) and 0.5 + 0.04 = 0.540 (dpo-loop)."""
    a = write_run(tmp_path / "a", "grpo", 0, synthetic_rows(0, 0.2, 0.1, 2.0, kl=False, tokens="total"))
    b = write_run(
        tmp_path / "b", "", 0, synthetic_rows(0, 0.5, 0.1, 2.0, kl=False, tokens="total"), {"name": "dpo-loop"}
    )
    with pytest.raises(CompareError, match="need --out"):
        report.main([str(a), str(b)])
    assert report.main([str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    t = md_table((tmp_path / "cmp" / "report.md").read_text(), "## Results per method")
    assert t["`grpo`"]["reward (last 5)"] == "0.240 (n=1)" and t["`dpo-loop`"]["reward (last 5)"] == "0.540 (n=1)"


def test_curves_add_the_largest_pass_at_k_after_pass_at_1():
    """Runs logging pass@1, pass@2 and pass@8 get a pass@8 curve (the largest k), drawn right after
    pass@1; runs that log only pass@1 keep the six fixed curves."""
    from anypo.report import CURVES, Run, curves_of

    rows = [{"step": 0, "eval/pass@1": 0.1, "eval/pass@2": 0.2}, {"step": 10, "eval/pass@8": 0.5}]
    keys = list(curves_of({"a": [Run(Path("a"), "a", 0, {}, rows)]}))
    assert keys == [
        "reward/mean",
        "eval/pass@1",
        "eval/pass@8",
        "policy/entropy",
        "response/length_mean",
        "kl/ref",
        "rollout/mixed_correct_group_frac",
    ]
    only1 = [{"step": 0, "eval/pass@1": 0.1}]
    assert list(curves_of({"a": [Run(Path("a"), "a", 0, {}, only1)]})) == list(CURVES)


def test_plot_finals_draws_each_seed_and_only_what_some_run_logged(tmp_path):
    """Two methods x two seeds with a final pass@1 and reward but no pass@k > 1: one PNG with two panels
    (the image's width grows with the panel count: 2 panels of max(3.5, 0.65 x 2 + 1.2) = 3.5 in at 100 dpi);
    runs without any of the end-of-run numbers draw nothing."""
    from PIL import Image

    def run(label, seed, p1):
        rows = [{"step": 1, "reward/mean": p1 / 2}, {"step": 1, "eval/pass@1": p1}]
        return report.Run(tmp_path / f"{label}{seed}", label, seed, {}, rows)

    groups = {"a": [run("a", 0, 0.2), run("a", 1, 0.4)], "b": [run("b", 0, 0.5), run("b", 1, 0.7)]}
    summaries = {r.path: report.run_summary(r) for rs in groups.values() for r in rs}
    assert summaries[tmp_path / "a1"]["pass@1"] == 0.4 and summaries[tmp_path / "a1"]["pass@k"] is None
    ((path, _alt),) = report.plot_finals(groups, summaries, tmp_path / "plots")
    assert path == tmp_path / "plots" / "final.png"
    assert Image.open(path).size[0] == 700
    empty = {"a": [report.Run(tmp_path / "e", "a", 0, {}, [{"step": 1, "loss/total": 1.0}])]}
    assert report.plot_finals(empty, {tmp_path / "e": report.run_summary(empty["a"][0])}, tmp_path / "p2") == []
