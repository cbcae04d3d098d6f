"""`anypo compare` end to end: 2 presets x 2 seeds of the tiny model with a deterministic toy reward,
killed with SIGKILL in the middle of its second run, finished with `--resume`; the report's numbers are
checked against the runs' own metrics.jsonl, and report.html is opened in headless Chromium.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TOY = str(Path(__file__).with_name("toy_rewards.py"))
PRESETS, SEEDS, STEPS = ("grpo", "dr_grpo"), (0, 1), 4
T_975_DF1 = 12.706  # Student-t quantile for two seeds (one degree of freedom), from the printed table
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"


def _anypo(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "anypo.cli", *args], **kw)


def _runs(compare_dir: Path) -> list[dict]:
    try:
        return json.loads((compare_dir / "compare.json").read_text())["runs"]
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def _has_checkpoint(run_dir: Path) -> bool:
    pointer = run_dir / "checkpoints" / "latest"
    return pointer.is_file() and (run_dir / "checkpoints" / pointer.read_text().strip() / "manifest.json").is_file()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state  # a zombie is dead, waiting for its new parent to reap it


@pytest.fixture(scope="module")
def compare_dir(tmp_path_factory) -> dict:
    """Run the compare, SIGKILL it once its first run has finished and its second has a checkpoint but no
    final/, check that the second run died with it, then `anypo compare --resume --parallel 2` it."""
    out = tmp_path_factory.mktemp("compare")
    log = open(out / "compare.log", "w")  # noqa: SIM115
    args = ["compare", *PRESETS, "--seeds", *map(str, SEEDS), "--smoke", "--threads", "1", "--name", "e2e",
            "--out-dir", str(out), "--steps", str(STEPS), "--lr", "1e-3", "--rewards", f"{TOY}:char_sum",
            "--eval-every", "2", "--eval-prompts", "4", "--eval-samples", "2"]  # fmt: skip
    proc = _anypo(*args, stdout=log, stderr=subprocess.STDOUT)
    deadline, d, victim = time.time() + 300, None, None
    while time.time() < deadline and proc.poll() is None:
        d = d or next(iter(out.glob("compare-e2e-*")), None)
        runs = _runs(d) if d else []
        if len(runs) == 4 and runs[0]["status"] == "finished" and runs[1].get("run_dir") and runs[1].get("pid"):
            second = d / runs[1]["run_dir"]
            if _has_checkpoint(second) and not (second / "final").exists():
                victim = runs[1]["pid"]
                os.kill(proc.pid, signal.SIGKILL)
                break
        time.sleep(0.02)
    proc.wait()
    assert victim is not None, (
        "the compare was not caught in its second run: " + (out / "compare.log").read_text()[-3000:]
    )
    deadline = time.time() + 30
    while _alive(victim) and time.time() < deadline:
        time.sleep(0.05)
    orphan_died = not _alive(victim)
    killed = {
        "first_metrics": (d / _runs(d)[0]["run_dir"] / "metrics.jsonl").read_text(),
        "second_dir": d / _runs(d)[1]["run_dir"],
        "statuses": [r["status"] for r in _runs(d)],
    }
    # the resume runs two at a time (one thread each): the interrupted run next to the third
    resume = _anypo("compare", "--resume", str(d), "--parallel", "2", stdout=log, stderr=subprocess.STDOUT)
    assert resume.wait(timeout=600) == 0, (out / "compare.log").read_text()[-3000:]
    log.close()
    return {"dir": d, "orphan_died": orphan_died, **killed}


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def test_layout(compare_dir):
    d = compare_dir["dir"]
    data = json.loads((d / "compare.json").read_text())
    assert data["presets"] == list(PRESETS) and data["seeds"] == list(SEEDS) and data["smoke"] is True
    assert [(r["preset"], r["seed"]) for r in data["runs"]] == [(p, s) for p in PRESETS for s in SEEDS]
    assert sorted(p.name for p in (d / "logs").iterdir()) == sorted(f"{p}-s{s}.log" for p in PRESETS for s in SEEDS)
    for r in data["runs"]:
        run = d / r["run_dir"]
        assert run.parent == d / "runs" and re.fullmatch(
            rf"{r['preset']}-s{r['seed']}-\d{{8}}-\d{{6}}(-\d+)?", run.name
        )
        assert r["status"] == "finished" and (run / "final").is_dir()
        assert [m["step"] for m in _metrics(run)] == list(range(0, STEPS + 1))  # step 0: the evaluation before training
        cfg = json.loads((run / "config.json").read_text())
        assert (cfg["preset"], cfg["seed"], cfg["steps"], cfg["model"]["name"]) == (
            r["preset"],
            r["seed"],
            STEPS,
            "tiny",
        )
        assert r["args"][:5] == [r["preset"], "--seed", str(r["seed"]), "--name", f"{r['preset']}-s{r['seed']}"]
    assert len(list((d / "runs").iterdir())) == 4 and not (d / "abandoned").exists()
    for f in ("report.md", "report.html", "plots/reward_mean.png", "plots/policy_entropy.png"):
        assert (d / f).is_file(), f


def test_resume_after_sigkill(compare_dir):
    """The run in flight died with the compare; the finished run was kept as it was; the interrupted one
    resumed from its checkpoint (same directory, no duplicated steps); the others started after."""
    d = compare_dir["dir"]
    assert compare_dir["orphan_died"], "the run in flight outlived the SIGKILLed compare"
    assert compare_dir["statuses"][0] == "finished" and compare_dir["statuses"][2:] == ["pending", "pending"]
    runs = _runs(d)
    assert (d / runs[0]["run_dir"] / "metrics.jsonl").read_text() == compare_dir["first_metrics"]
    assert d / runs[1]["run_dir"] == compare_dir["second_dir"] and runs[1]["attempts"] == 2
    log1 = (d / runs[1]["log"]).read_text()
    assert log1.count("=== ") == 2 and f"anypo train --resume {compare_dir['second_dir'].resolve()}" in log1
    assert [r["attempts"] for r in runs] == [1, 2, 1, 1]


def _cells(md: str, heading: str) -> dict[str, dict[str, str]]:
    lines = md[md.index(heading) :].splitlines()
    rows = [ln for ln in lines[2 : lines.index("", 2)] if ln.startswith("|")]
    split = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in rows]
    return {r[0]: dict(zip(split[0], r, strict=True)) for r in split[2:]}


def _numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", cell)]


def _expected(values: list[float]) -> tuple[float, float, float]:
    """Mean of two seeds and its 95% interval: sd = |a - b| / sqrt 2, half-width t * sd / sqrt 2 = t |a - b| / 2."""
    a, b = values
    mean, half = (a + b) / 2, T_975_DF1 * abs(a - b) / 2
    return mean, mean - half, mean + half


def test_report_numbers_match_the_runs_metrics(compare_dir):
    d = compare_dir["dir"]
    md = (d / "report.md").read_text()
    table = {**_cells(md, "## Results per method")}
    cost = _cells(md, "## Cost per method")
    per_run = {}
    for r in _runs(d):
        rows = [x for x in _metrics(d / r["run_dir"]) if x["step"] > 0]  # training steps
        evals = [x for x in rows if "eval/pass@1" in x]
        assert [x["step"] for x in evals] == [2, 4]  # the step-0 evaluation is in its own row
        per_run[(r["preset"], r["seed"])] = {
            "held-out pass@1": (evals[-1]["eval/pass@1"], 3),
            "held-out pass@2": (evals[-1]["eval/pass@2"], 3),
            "reward (last 5)": (sum(x["reward/mean"] for x in rows[-5:]) / len(rows[-5:]), 3),
            "entropy (last 5)": (sum(x["policy/entropy"] for x in rows[-5:]) / len(rows[-5:]), 3),
            "tokens generated": (rows[-1]["rollout/generated_tokens_total"], 0),
            "wall time s (sum of steps)": (sum(x["time/step_s"] for x in rows), 1),
            "peak RSS GB": (max(x["memory/peak_rss_gb"] for x in rows), 2),
        }
        assert rows[-1]["rollout/generated_tokens_total"] == sum(x["rollout/generated_tokens"] for x in rows)
    for p in PRESETS:
        row = {**table[f"`{p}`"], **cost[f"`{p}`"]}
        assert row["seeds"] == "2 (0, 1)"
        for col, (_, decimals) in per_run[(p, 0)].items():
            expected = _expected([per_run[(p, s)][col][0] for s in SEEDS])
            got = _numbers(row[col])
            assert len(got) == 3, (p, col, row[col])
            for g, e in zip(got, expected, strict=True):
                assert g == pytest.approx(e, abs=0.6 * 10**-decimals + 1e-3 * abs(e)), (p, col, row[col], expected)
    pair = [ln for ln in md.splitlines() if ln.startswith("| `dr_grpo` - `grpo` | reward")]
    assert len(pair) == 1
    cells = [c.strip() for c in pair[0].strip("|").split("|")]
    mean = {p: sum(per_run[(p, s)]["reward (last 5)"][0] for s in SEEDS) / 2 for p in PRESETS}
    assert float(cells[2]) == pytest.approx(mean["dr_grpo"] - mean["grpo"], abs=6e-4)
    assert cells[5] == "2 vs 2"
    if cells[3] != "n/a":
        lo, hi = _numbers(cells[3])
        assert cells[6] == ("not distinguishable" if lo <= 0 <= hi else ("higher" if lo > 0 else "lower"))
    assert "anypo compare grpo dr_grpo --seeds 0 1 --smoke" in md
    for r in _runs(d):
        assert "anypo train " + " ".join(r["args"]) in md


def test_report_rerenders_from_logs_alone(compare_dir, tmp_path):
    """`anypo report DIR` on a copy (without the compare's own report) writes the same report.md."""
    d = compare_dir["dir"]
    copy = tmp_path / d.name
    shutil.copytree(d, copy, ignore=shutil.ignore_patterns("report.*", "plots", "final", "checkpoints"))
    p = _anypo("report", str(copy), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = p.communicate(timeout=120)[0]
    assert p.returncode == 0, out
    md = (copy / "report.md").read_text()
    original = (d / "report.md").read_text()
    # the directories differ (a copy); the numbers, tables and verdict do not
    section = lambda text: text[text.index("## Results per method") : text.index("## Curves")]
    assert section(md) == section(original)


def _chromium(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp / 'chromium-profile'}", "--enable-logging=stderr", "--v=0"]  # fmt: skip
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


def _console(stderr: str) -> list[str]:
    """Console messages (errors, uncaught exceptions) Chromium logs with --enable-logging=stderr."""
    return [ln for ln in stderr.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln]


@pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="Chromium not found (the Makefile's test target installs Debian's chromium with apt-get when it can)",
)
def test_report_html_opens_in_headless_chromium(compare_dir, tmp_path):
    html_path = compare_dir["dir"] / "report.html"
    html = html_path.read_text()
    assert "<script" not in html and not re.search(r"(src|href)=\"(https?:)?//", html)
    # every embedded plot decodes as a PNG
    import matplotlib.image

    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) >= 3
    for data in images:
        assert matplotlib.image.imread(io.BytesIO(base64.b64decode(data)), format="png").shape[0] > 100
    # a page with a console error is caught by this check (so that an empty list below means something)
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><script>console.error("boom"); nope();</script></body></html>')
    assert len(_console(_chromium(["--dump-dom", bad.as_uri()], tmp_path).stderr)) == 2
    res = _chromium(["--dump-dom", html_path.as_uri()], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert _console(res.stderr) == []
    assert "Results per method" in res.stdout and res.stdout.count("<img") == len(images)
    shot = tmp_path / "report.png"
    res = _chromium([f"--screenshot={shot}", "--window-size=1200,2000", html_path.as_uri()], tmp_path)
    assert res.returncode == 0 and shot.stat().st_size > 20_000 and _console(res.stderr) == []
