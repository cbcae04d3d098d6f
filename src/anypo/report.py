"""``anypo report``: report.md and report.html of a compare directory or a run directory, from its logs alone.

The report reads only each run directory's ``config.json`` and ``metrics.jsonl`` (never the training
code, never torch), so a run of any loop shape that logs the same metric names appears in it. The
method of a run is its config's ``preset`` (else its ``name``); seeds of one method are replicates.

What is computed (``docs/compare.md`` explains it for users):
- per run: the last held-out evaluation (``eval/pass@1``, ``eval/pass@k`` with the largest k), the mean
  of the last ``LAST_N`` training steps of reward, response length, entropy and KL, the sum of
  ``time/step_s``, the tokens generated and the peak memory;
- per method: the mean across seeds with a 95% Student-t interval (``anypo.stats.mean_ci``);
- each method against the first: difference of means with Welch's interval and test (``anypo.stats.welch``);
- curves against step and against tokens generated: mean across seeds with a 95% band.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anypo import stats
from anypo.compare import COMPARE_FILE, CompareError, find_run_dir, load_compare, run_state, train_command
from anypo.report_doc import Doc, to_html, to_markdown
from anypo.runs import read_jsonl

LAST_N = 5
"""Training metrics are the mean of the last LAST_N training steps of a run (one step is noisy)."""

CURVES = {
    "reward/mean": "training reward (mean)",
    "eval/pass@1": "held-out pass@1",
    "policy/entropy": "policy entropy (nats/token)",
    "response/length_mean": "response length (tokens)",
    "kl/ref": "KL to reference",
    "rollout/mixed_correct_group_frac": "groups with right and wrong samples",
}
"""Metrics drawn as curves (when any run logs them), with their axis labels."""


@dataclass
class Run:
    """One run directory as the report sees it."""

    path: Path
    label: str
    seed: int | None
    config: dict[str, Any]
    rows: list[dict[str, Any]]
    state: str = "finished"
    command: str | None = None


def merge_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per step (later keys win: an evaluation logged apart from its step joins it), by step."""
    by_step: dict[int, dict[str, Any]] = {}
    for r in rows:
        if isinstance(r.get("step"), int | float):
            by_step.setdefault(int(r["step"]), {}).update(r)
    return [by_step[s] for s in sorted(by_step)]


def load_run(path: Path, command: str | None = None) -> Run:
    """Read a run directory (config.json + metrics.jsonl); a ReportError-style one-line error otherwise."""
    path = Path(path)
    if not (path / "config.json").is_file() or not (path / "metrics.jsonl").is_file():
        raise CompareError(f"{path} is not a run directory (needs config.json and metrics.jsonl)")
    cfg = json.loads((path / "config.json").read_text())
    rows = read_jsonl(path / "metrics.jsonl")  # a line cut by SIGKILL is left out
    label = cfg.get("preset") or cfg.get("name") or path.name
    seed = cfg.get("seed")
    return Run(
        path, str(label), seed if isinstance(seed, int) else None, cfg, merge_rows(rows), run_state(path), command
    )


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def token_axis(rows: list[dict[str, Any]]) -> list[float | None]:
    """Response tokens generated up to and including each row's step (None where not logged).

    ``rollout/generated_tokens_total`` when logged, else the running sum of ``rollout/generated_tokens``;
    step 0 (the evaluation before training) is at 0 tokens.
    """
    out: list[float | None] = []
    running, have_any = 0.0, False
    for r in rows:
        total, per_step = _num(r.get("rollout/generated_tokens_total")), _num(r.get("rollout/generated_tokens"))
        if per_step is not None:
            running += per_step
            have_any = True
        if total is not None:
            out.append(total)
        elif per_step is not None or (have_any and r.get("step", 0) > 0):
            out.append(running)
        else:
            out.append(0.0 if r.get("step") == 0 else None)
    return out


def run_summary(run: Run) -> dict[str, float | None]:
    """The final numbers of one run (see the module docstring); None where the run did not log a metric."""
    rows = run.rows
    train = [r for r in rows if r.get("step", 0) > 0 and _num(r.get("reward/mean")) is not None]
    evals = [r for r in rows if _num(r.get("eval/pass@1")) is not None]
    out: dict[str, float | None] = {}
    last_eval = evals[-1] if evals else {}
    out["pass@1"] = _num(last_eval.get("eval/pass@1"))
    ks = [int(m.group(1)) for k in last_eval if (m := re.fullmatch(r"eval/pass@(\d+)", k))]
    out["k"] = float(max(ks)) if ks else None
    out["pass@k"] = _num(last_eval.get(f"eval/pass@{max(ks)}")) if ks and max(ks) > 1 else None
    tail = train[-LAST_N:]
    for name, key in (("reward", "reward/mean"), ("length", "response/length_mean"), ("entropy", "policy/entropy")):
        vals = [v for r in tail if (v := _num(r.get(key))) is not None]
        out[name] = sum(vals) / len(vals) if vals else None
    kls = [v for r in tail if (v := _num(r.get("kl/ref"))) is not None]
    out["kl"] = sum(kls) / len(kls) if kls else None
    times = [v for r in rows if (v := _num(r.get("time/step_s"))) is not None]
    out["wall_s"] = sum(times) if times else None
    toks = [t for t in token_axis(rows) if t is not None]
    out["tokens"] = toks[-1] if toks and any("rollout/generated_tokens" in k for r in rows for k in r) else None
    mems = [v for r in rows if (v := _num(r.get("memory/peak_rss_gb"))) is not None]
    out["peak_gb"] = max(mems) if mems else None
    out["steps"] = float(max((r["step"] for r in rows), default=0))
    return out


@dataclass(frozen=True)
class Column:
    """One column of the methods table: a key of ``run_summary`` and how to print it."""

    key: str
    title: str
    decimals: int


RESULT_COLUMNS = [
    Column("pass@1", "held-out pass@1", 3),
    Column("pass@k", "held-out pass@k", 3),
    Column("reward", f"reward (last {LAST_N})", 3),
    Column("length", f"length (last {LAST_N})", 1),
    Column("entropy", f"entropy (last {LAST_N})", 3),
    Column("kl", f"KL to ref (last {LAST_N})", 4),
]
COST_COLUMNS = [
    Column("wall_s", "wall time s (sum of steps)", 1),
    Column("tokens", "tokens generated", 0),
    Column("peak_gb", "peak RSS GB", 2),
    Column("steps", "steps", 0),
]


def fnum(x: float, decimals: int, sign: bool = False) -> str:
    """``x`` with ``decimals`` decimals (and a sign if asked); never '-0.000'."""
    if round(x, decimals) == 0:
        x = 0.0
    return f"{x:+.{decimals}f}" if sign else f"{x:.{decimals}f}"


def fmt_summary(s: stats.Summary, decimals: int) -> str:
    """``mean [lo, hi]``; ``mean (n=1)`` without an interval; ``n/a`` without values."""
    if s.n == 0:
        return "n/a"
    if s.lo is None:
        return f"{fnum(s.mean, decimals)} (n={s.n})"
    return f"{fnum(s.mean, decimals)} [{fnum(s.lo, decimals)}, {fnum(s.hi, decimals)}]"


# ---- sections ----
def group_runs(runs: list[Run], order: list[str] | None = None) -> dict[str, list[Run]]:
    """Runs by method label, methods in ``order`` (then first appearance), seeds sorted."""
    groups: dict[str, list[Run]] = {label: [] for label in order or []}
    for r in runs:
        groups.setdefault(r.label, []).append(r)
    return {k: sorted(v, key=lambda r: (r.seed is None, r.seed or 0, r.path.name)) for k, v in groups.items() if v}


def titled(key: str, title: str, groups: dict[str, list[Run]], summaries: dict[Path, dict]) -> str:
    """``title``, with "pass@k" named by its k (pass@4) when every run that logged one used the same k."""
    ks = {int(k) for rs in groups.values() for r in rs if (k := summaries[r.path].get("k")) and k > 1}
    return title.replace("pass@k", f"pass@{ks.pop()}") if key == "pass@k" and len(ks) == 1 else title


def methods_table(
    groups: dict[str, list[Run]], summaries: dict[Path, dict], columns: list[Column]
) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a per-method table (mean [95% interval] across seeds) of the logged ``columns``."""
    cols = [c for c in columns if any(summaries[r.path].get(c.key) is not None for rs in groups.values() for r in rs)]
    header = ["method", "seeds"] + [titled(c.key, c.title, groups, summaries) for c in cols]
    rows = []
    for label, rs in groups.items():
        seeds = ", ".join(str(r.seed) for r in rs)
        cells = [fmt_summary(stats.mean_ci([summaries[r.path].get(c.key) for r in rs]), c.decimals) for c in cols]
        rows.append([f"`{label}`", f"{len(rs)} ({seeds})", *cells])
    return header, rows


PAIRWISE = (("pass@1", "held-out pass@1"), ("reward", f"reward (last {LAST_N} steps)"))


def pairwise(groups: dict[str, list[Run]], summaries: dict[Path, dict]) -> list[tuple[str, str, str, stats.Welch]]:
    """(method, base, metric title, Welch result) of every method against the first, on PAIRWISE metrics."""
    labels = list(groups)
    out = []
    for key, title in PAIRWISE:
        base_vals = [summaries[r.path].get(key) for r in groups[labels[0]]]
        if all(v is None for v in base_vals):
            continue
        for label in labels[1:]:
            vals = [summaries[r.path].get(key) for r in groups[label]]
            if all(v is None for v in vals):
                continue
            out.append((label, labels[0], title, stats.welch(base_vals, vals)))
    return out


def reading(w: stats.Welch) -> str:
    """What one pairwise row supports, in words."""
    if w.note:
        return w.note
    if w.distinguishable:
        return "higher" if w.diff > 0 else "lower"
    return "not distinguishable"


def pairwise_rows(pairs: list[tuple[str, str, str, stats.Welch]], decimals: int = 3) -> list[list[str]]:
    """Rows of the pairwise table."""
    rows = []
    for label, base, title, w in pairs:
        ci = "n/a" if w.lo is None else f"[{fnum(w.lo, decimals, True)}, {fnum(w.hi, decimals, True)}]"
        p = "n/a" if w.p is None else f"{w.p:.3g}"
        rows.append(
            [
                f"`{label}` - `{base}`",
                title,
                f"{fnum(w.diff, decimals, True)}",
                ci,
                p,
                f"{w.n_b} vs {w.n_a}",
                reading(w),
            ]
        )
    return rows


def verdict(pairs: list[tuple[str, str, str, stats.Welch]], has_eval: bool, n_methods: int) -> list[str]:
    """Paragraphs that state only what the pairwise table supports."""
    if n_methods < 2:
        return ["One method only: there is nothing to compare."]
    lines = []
    for label, base, title, w in pairs:
        r = reading(w)
        n = f"n = {w.n_b} vs {w.n_a} seeds"
        if r == "n too small":
            lines.append(
                f"`{label}` vs `{base}` on {title}: too few seeds for an interval or a test ({n}); "
                f"the difference of means is {fnum(w.diff, 3, True)}, which alone supports no conclusion."
            )
        elif r == "zero variance":
            lines.append(
                f"`{label}` vs `{base}` on {title}: each method gave the same value on every seed "
                f"(difference {fnum(w.diff, 3, True)}, {n}); with no spread there is no interval or test."
            )
        elif r == "not distinguishable":
            lines.append(
                f"`{label}` and `{base}` are **not distinguishable** on {title}: difference {fnum(w.diff, 3, True)}, "
                f"95% interval [{fnum(w.lo, 3, True)}, {fnum(w.hi, 3, True)}] contains 0 (Welch p = {w.p:.3g}, {n})."
            )
        else:
            lines.append(
                f"`{label}` is **{r}** than `{base}` on {title} by {fnum(abs(w.diff), 3)} "
                f"(95% interval of the difference [{fnum(w.lo, 3, True)}, {fnum(w.hi, 3, True)}], Welch p = {w.p:.3g}, {n})."
            )
    tested = sum(w.p is not None for *_, w in pairs)
    if tested > 1:
        lines.append(
            f"These are {tested} tests at the 5% level without a correction for multiple comparisons: "
            "by chance alone about one in twenty would look distinguishable when there is no difference."
        )
    if not has_eval:
        lines.append(
            "The runs logged no held-out evaluation (`eval/pass@1`), so the table rests on the training reward, "
            "which is measured on the training prompts the methods optimise."
        )
    return lines


def budget_notes(data: dict[str, Any] | None, runs: list[Run], summaries: dict[Path, dict]) -> list[str]:
    """Runs that stopped before the compare's budget (their step limit came first), named."""
    if not data or not data.get("budget"):
        return []
    kind, value = data["budget"]["kind"], data["budget"]["value"]
    key = {"steps": "steps", "tokens": "tokens", "seconds": "wall_s"}[kind]
    short = [r.path.name for r in runs if (v := summaries[r.path].get(key)) is not None and v < value]
    if not short:
        return []
    return [
        f"Not every run reached the {kind} budget of {value}: {', '.join(short)} stopped first "
        "(their `--steps` limit, or an error); raise `--steps` so that the budget binds."
    ]


# ---- curves ----
def _mean_band(values: list[list[float]]) -> tuple[list[float], list[float], list[float], list[int]]:
    """Per x: mean, band low / high (95% t-interval across seeds, nan where n < 2) and n, from the
    finite values of each column of ``values`` (one list per x)."""
    mean, lo, hi, ns = [], [], [], []
    for col in values:
        s = stats.mean_ci([v for v in col if math.isfinite(v)])
        mean.append(s.mean)
        lo.append(math.nan if s.lo is None else s.lo)
        hi.append(math.nan if s.hi is None else s.hi)
        ns.append(s.n)
    return mean, lo, hi, ns


def curve_by_step(rs: list[Run], key: str) -> tuple[list[float], tuple]:
    """x = every step at which some seed logged ``key``; at each, mean and band over the seeds that did."""
    per_seed = [{r["step"]: v for r in run.rows if (v := _num(r.get(key))) is not None} for run in rs]
    xs = sorted({s for d in per_seed for s in d})
    return [float(x) for x in xs], _mean_band([[d.get(x, math.nan) for d in per_seed] for x in xs])


def curve_by_tokens(rs: list[Run], key: str, points: int = 200) -> tuple[list[float], tuple] | None:
    """x = a grid of tokens generated from 0 to the longest run; each seed's values are linearly
    interpolated onto it inside the seed's own range (never extrapolated), then averaged with a band."""
    import numpy as np

    per_seed = []
    for run in rs:
        pts = sorted(
            (t, v)
            for r, t in zip(run.rows, token_axis(run.rows), strict=True)
            if t is not None and (v := _num(r.get(key))) is not None
        )
        if pts:
            per_seed.append((np.array([p[0] for p in pts]), np.array([p[1] for p in pts])))
    if not per_seed:
        return None
    top = max(float(x[-1]) for x, _ in per_seed)
    grid = np.linspace(0.0, top, points) if top > 0 else np.zeros(1)
    cols = []
    for x, y in per_seed:
        vals = np.interp(grid, x, y)
        vals[(grid < x[0]) | (grid > x[-1])] = np.nan
        cols.append(vals)
    table = np.stack(cols, axis=1)  # [points, seeds]
    return grid.tolist(), _mean_band([list(row) for row in table])


def curves_of(groups: dict[str, list[Run]]) -> dict[str, str]:
    """CURVES, plus the held-out pass@k of the largest k > 1 any run logs, after pass@1."""
    ks = {
        int(key.removeprefix("eval/pass@"))
        for rs in groups.values()
        for run in rs
        for row in run.rows
        for key in row
        if key.startswith("eval/pass@") and key.removeprefix("eval/pass@").isdigit()
    }
    k = max(ks, default=1)
    out = {}
    for key, label in CURVES.items():
        out[key] = label
        if key == "eval/pass@1" and k > 1:
            out[f"eval/pass@{k}"] = f"held-out pass@{k}"
    return out


def seed_points(run: Run, key: str, x: str) -> tuple[list[float], list[float]]:
    """One seed's raw values of ``key`` against the step (``x="step"``) or the tokens generated so far."""
    xs_all = [float(r["step"]) for r in run.rows] if x == "step" else token_axis(run.rows)
    pts = [
        (t, v) for r, t in zip(run.rows, xs_all, strict=True) if t is not None and (v := _num(r.get(key))) is not None
    ]
    pts.sort()
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_curves(groups: dict[str, list[Run]], plot_dir: Path) -> list[tuple[Path, str]]:
    """One PNG per logged metric of CURVES: against step (left) and against tokens generated (right).

    Per method: each seed's own values as a thin line (points where it has few), and, where every seed
    of the method has a value, their mean as a thick line with the 95% band. Runs stop at different
    steps (a token budget), so a mean over the seeds that happen to remain would jump where one ends;
    it is not drawn there. The y range is that of the seeds' values: with 2 seeds the band
    (t(0.975, 1) = 12.7) may leave the plot.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    plot_dir.mkdir(parents=True, exist_ok=True)
    colors = plt.get_cmap("tab10").colors
    written = []
    for key, ylabel in curves_of(groups).items():
        if not any(_num(r.get(key)) is not None for rs in groups.values() for run in rs for r in run.rows):
            continue
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        any_tokens = False
        seen: list[float] = []
        for i, (label, rs) in enumerate(groups.items()):
            color = colors[i % len(colors)]
            style = ("-", "--", "-.", ":")[i % 4]  # coinciding curves of two methods stay visible
            panels = [(axes[0], "step", curve_by_step(rs, key)), (axes[1], "tokens", curve_by_tokens(rs, key))]
            for ax, x, curve in panels:
                if curve is None or not curve[0]:
                    continue
                any_tokens |= ax is axes[1]
                for run in rs:
                    px, py = seed_points(run, key, x)
                    seen += py
                    few = len(px) <= 12
                    ax.plot(px, py, color=color, lw=0.8, alpha=0.35, marker="o" if few else None, ms=3)
                xs, (mean, lo, hi, ns) = curve
                full = max(ns)  # the seeds of this method that logged the metric
                at = [j for j, n in enumerate(ns) if n == full]
                if not at or full < 2:
                    ax.plot([], [], color=color, ls=style, label=f"{label} (n={len(rs)})")
                    continue
                keep = set(at)
                mean, lo, hi = ([v if j in keep else math.nan for j, v in enumerate(col)] for col in (mean, lo, hi))
                marker = "o" if len(at) <= 12 else None
                ax.plot(xs, mean, color=color, ls=style, lw=2, marker=marker, ms=4, label=f"{label} (n={len(rs)})")
                ax.fill_between(xs, lo, hi, color=color, alpha=0.15, linewidth=0)
        axes[0].set_xlabel("training step")
        axes[1].set_xlabel("response tokens generated (all draws)")
        if not any_tokens:
            axes[1].text(
                0.5,
                0.5,
                "tokens generated not logged\n(rollout/generated_tokens)",
                ha="center",
                va="center",
                transform=axes[1].transAxes,
                color="0.4",
            )
        axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
        if seen:
            low, high = min(seen), max(seen)
            pad = 0.05 * (high - low) if high > low else 0.5
            for ax in axes:
                ax.set_ylim(low - pad, high + pad)
        for ax in axes:
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.ticklabel_format(axis="y", useOffset=False)  # plain values, not "+1.079e1" offsets
        axes[0].legend(fontsize=8, loc="best")
        fig.suptitle(
            f"{key}: thin = each seed; thick = mean where every seed has a value, band = 95% t-interval",
            fontsize=10,
        )
        fig.tight_layout()
        path = plot_dir / f"{key.replace('/', '_').replace('@', '_at_')}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append((path, f"{key} against step and against tokens generated"))
    return written


FINALS = (("pass@1", "held-out pass@1"), ("pass@k", "held-out pass@k"), ("reward", f"reward (last {LAST_N} steps)"))
"""The end-of-run numbers drawn per seed by ``plot_finals`` (keys of ``run_summary``)."""


def plot_finals(groups: dict[str, list[Run]], summaries: dict[Path, dict], plot_dir: Path) -> list[tuple[Path, str]]:
    """One PNG, ``final.png``: a panel per end-of-run number of FINALS that some run has. Per method, each
    seed's value as a dot (labelled with its seed where there are few), the mean as a bar and its 95%
    t-interval as a vertical line (none for one seed). What the methods table says, seen at a glance: a
    mean carried by one outlying seed shows as such."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (k, t) for k, t in FINALS if any(summaries[r.path].get(k) is not None for rs in groups.values() for r in rs)
    ]
    if not panels:
        return []
    plot_dir.mkdir(parents=True, exist_ok=True)
    colors = plt.get_cmap("tab10").colors
    labels = list(groups)
    fig, axes = plt.subplots(1, len(panels), figsize=(max(3.5, 0.65 * len(labels) + 1.2) * len(panels), 4.0))
    axes = [axes] if len(panels) == 1 else list(axes)
    for ax, (key, title) in zip(axes, panels, strict=True):
        for i, rs in enumerate(groups.values()):
            color = colors[i % len(colors)]
            vals = [(r.seed, v) for r in rs if (v := summaries[r.path].get(key)) is not None]
            if not vals:
                continue
            offsets = [0.0] if len(vals) == 1 else [-0.15 + 0.3 * j / (len(vals) - 1) for j in range(len(vals))]
            for off, (seed, v) in zip(offsets, sorted(vals, key=lambda sv: sv[1]), strict=True):
                ax.plot(i + off, v, "o", color=color, alpha=0.6, ms=5)
                if len(vals) <= 5:
                    ax.annotate(f"s{seed}", (i + off, v), xytext=(4, 0), textcoords="offset points", fontsize=7,
                                va="center", color="0.35")  # fmt: skip
            summ = stats.mean_ci([v for _, v in vals])
            ax.hlines(summ.mean, i - 0.3, i + 0.3, color=color, lw=2.5)
            if summ.lo is not None and summ.hi is not None:
                ax.vlines(i, summ.lo, summ.hi, color=color, lw=1.2)
        ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 5 else 0, fontsize=9)
        ax.set_xlim(-0.6, len(labels) - 0.4)
        ax.set_ylabel(titled(key, title, groups, summaries))
        ax.grid(axis="y", alpha=0.3)
        if key.startswith("pass@"):
            ax.set_ylim(-0.03, 1.03)
    fig.suptitle("end of each run: dots = seeds, bar = mean, line = 95% t-interval (2+ seeds)", fontsize=10)
    fig.tight_layout()
    path = plot_dir / "final.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [(path, "end-of-run numbers per method: each seed, the mean and its 95% interval")]


# ---- the report ----
WORKLOAD = {
    "task.name": "task",
    "model.name": "model",
    "prompts_per_step": "prompts per step",
    "samples_per_prompt": "samples per prompt",
    "sampling.max_new_tokens": "max new tokens",
    "lr": "lr",
    "steps": "step limit",
    "budget_tokens": "token budget",
    "budget_seconds": "seconds budget",
    "eval_prompts": "held-out prompts",
    "eval_samples": "held-out samples per prompt",
}
"""Config fields that describe the workload; the report says which of them differ between runs."""


def _cfg_get(cfg: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(cfg, dict) or part not in cfg:
            return None
        cfg = cfg[part]
    return cfg


def workload_lines(runs: list[Run]) -> list[str]:
    """The shared workload in one sentence, and the settings that differ between runs."""
    same, differ = [], []
    evaluated = any(_num(row.get("eval/pass@1")) is not None for r in runs for row in r.rows)
    for key, title in WORKLOAD.items():
        if key.startswith("eval_") and not evaluated:
            continue  # no held-out evaluation was run: its settings say nothing
        vals = {json.dumps(_cfg_get(r.config, key)) for r in runs}
        if len(vals) == 1:
            v = _cfg_get(runs[0].config, key)
            if v not in (None, 0, 0.0) or key in ("steps",):
                same.append(f"{title} `{v}`")
        else:
            differ.append(f"{title} ({', '.join(sorted(vals))})")
    lines = ["Workload of every run: " + ", ".join(same) + "."]
    if differ:
        lines.append("**These settings differ between runs:** " + "; ".join(differ) + ".")
    return lines


def _rerun_snippet(run_dir: Path) -> str:
    """A command that re-runs a run's resolved config.json exactly (a new run directory)."""
    return (
        'python -c "import json; from anypo.config import from_jsonable; from anypo.train import train; '
        f"train(from_jsonable(json.load(open('{run_dir / 'config.json'}'))))\""
    )


def collect(dirs: list[Path]) -> tuple[str, dict[str, Any] | None, list[Run], list[list[str]]]:
    """(title, compare.json or None, runs in the statistics, rows of the runs table) of the dirs to report."""
    import shlex

    if len(dirs) == 1 and (dirs[0] / COMPARE_FILE).is_file():
        d = dirs[0]
        data = load_compare(d)
        runs, table = [], []
        for spec in data["runs"]:
            rd = find_run_dir(d, spec)
            cmd = spec.get("command") or shlex.join(["anypo", *train_command(d, spec)])
            state = run_state(rd) if rd is not None and (rd / "metrics.jsonl").exists() else "missing"
            steps = ""
            if state != "missing":
                run = load_run(rd, cmd)
                steps = str(int(max((r["step"] for r in run.rows), default=0)))
                if state == "finished":
                    runs.append(run)
            where = str(rd.relative_to(d)) if rd is not None else "-"
            status = "finished" if state == "finished" else f"{spec.get('status', state)} (not in the statistics)"
            table.append([spec["name"], f"`{spec['preset']}`", str(spec["seed"]), status, steps, where, spec["log"]])
        return f"Compare `{data['name']}`", data, runs, table
    for d in dirs:
        if not (d / "config.json").is_file():
            raise CompareError(
                f"{d} is neither a compare directory ({COMPARE_FILE}) nor a run directory (config.json + metrics.jsonl)"
            )
    runs = [load_run(d) for d in dirs]
    table = [[r.path.name, f"`{r.label}`", str(r.seed), r.state, str(len(r.rows)), str(r.path), "-"] for r in runs]
    title = f"Run `{runs[0].path.name}`" if len(runs) == 1 else f"{len(runs)} runs"
    return title, None, runs, table


def build(dirs: list[Path], out: Path) -> Doc:
    """The report of ``dirs`` (one compare dir, or run dirs) as a Doc; plots are written under out/plots."""
    title, data, runs, run_table = collect(dirs)
    doc = Doc()
    doc.add("h1", title)
    if not runs:
        doc.add("p", "No run has finished yet: nothing to report. Finish the compare with `anypo compare --resume`.")
    else:
        _results(doc, data, runs, out)
    doc.add("h2", "Runs")
    doc.add("table", ["run", "method", "seed", "state", "steps logged", "directory", "log"], run_table)
    doc.add("h2", "Reproduce")
    if data is not None:
        doc.add("p", f"The whole compare (from `{data.get('cwd', '.')}`):")
        doc.add("code", data["command"])
        doc.add("p", "Each run alone (the compare ran exactly these):")
        doc.add("code", "\n".join(r.command for r in runs if r.command) or "(no finished run)")
    doc.add("p", "Any run again from its resolved `config.json` (exactly the same settings, a new run directory):")
    doc.add("code", "\n".join(_rerun_snippet(r.path.resolve()) for r in runs[:1]) or "(no run)")
    return doc


def _results(doc: Doc, data: dict[str, Any] | None, runs: list[Run], out: Path) -> None:
    """The numbers, the pairwise table, the verdict and the curves."""
    groups = group_runs(runs, data["presets"] if data else None)
    summaries = {r.path: run_summary(r) for r in runs}
    for line in workload_lines(runs):
        doc.add("p", line)
    if data is not None:
        budget = data.get("budget")
        doc.add(
            "p",
            f"Seeds {', '.join(map(str, data['seeds']))}; budget "
            + (f"{budget['value']} {budget['kind']}" if budget else "none (each run's own `--steps`)")
            + (f"; shared overrides `{' '.join(data['overrides'])}`" if data.get("overrides") else "")
            + ".",
        )
    doc.add("h2", "Results per method")
    doc.add("table", *methods_table(groups, summaries, RESULT_COLUMNS))
    doc.add(
        "p",
        "Each cell: mean across seeds [95% t-interval: mean +- t(0.975, n-1) * sd / sqrt(n)]; `(n=1)`: one seed, "
        f"no interval. Held-out pass@k: the last evaluation of each run. Reward, response length (tokens), entropy "
        f"and KL: the mean of the last {LAST_N} training steps of each run (all of them if fewer).",
    )
    for path, alt in plot_finals(groups, summaries, out / "plots"):
        doc.add("img", path, alt)
    doc.add("h2", "Cost per method")
    doc.add("table", *methods_table(groups, summaries, COST_COLUMNS))
    doc.add(
        "p",
        "Wall time: the sum of the logged training step times (evaluations excluded). Tokens: response tokens "
        "generated for training, every draw counted (methods that sample more pay for it). Peak RSS: the "
        "largest logged peak resident memory of the run's process. Steps: the last logged step.",
    )
    for line in budget_notes(data, runs, summaries):
        doc.add("p", line)
    pairs = pairwise(groups, summaries) if len(groups) > 1 else []
    if pairs:
        doc.add("h2", f"Each method against `{next(iter(groups))}`")
        header = ["difference", "metric", "mean difference", "95% interval (Welch)", "p (Welch t-test)", "seeds",
                  "reading"]  # fmt: skip
        doc.add("table", header, pairwise_rows(pairs))
        doc.add(
            "p",
            "Difference of the means across seeds; interval and two-sided p from Welch's t-test (unequal variances, "
            "Welch-Satterthwaite degrees of freedom). 'not distinguishable': the interval contains 0; "
            "'n too small': fewer than 2 seeds on a side.",
        )
    doc.add("h2", "Verdict")
    has_eval = any(summaries[r.path].get("pass@1") is not None for r in runs)
    for line in verdict(pairs, has_eval, len(groups)):
        doc.add("p", line)
    doc.add("h2", "Curves")
    doc.add(
        "p",
        "Thin lines: each seed's values. Thick line: the mean across seeds where every seed of the method has a "
        "value, band: its 95% t-interval (runs that stop at different steps leave the mean out where some have "
        "ended; the y range is that of the seeds' values). Against "
        "tokens generated, each seed is interpolated linearly onto a common grid within its own range.",
    )
    for path, alt in plot_curves(groups, out / "plots"):
        doc.add("img", path, alt)


def render(dirs: list[Path], out: Path | None = None) -> Path:
    """Write report.md, report.html and plots/ for ``dirs`` into ``out`` (default: the one dir); return it."""
    dirs = [Path(d) for d in dirs]
    if not dirs:
        raise CompareError("give a compare directory or a run directory")
    for d in dirs:
        if not d.is_dir():
            raise CompareError(f"{d} is not a directory")
    if out is None:
        if len(dirs) > 1:
            raise CompareError("several run directories need --out DIR for the report")
        out = dirs[0]
    out.mkdir(parents=True, exist_ok=True)
    doc = build(dirs, out)
    (out / "report.md").write_text(to_markdown(doc, out))
    (out / "report.html").write_text(to_html(doc, doc.blocks[0][1].replace("`", "")))
    return out


def main(argv: list[str]) -> int:
    """``anypo report DIR [DIR ...] [--out OUT]``: returns the exit code."""
    if not argv or argv[0] in ("-h", "--help"):
        print(
            "usage: anypo report COMPARE_DIR | RUN_DIR [RUN_DIR ...] [--out OUT]\n\n"
            "Re-renders report.md and report.html from the directories' logs alone (config.json, metrics.jsonl).\n"
            "Several run directories (of any loop that logs the same metrics) are compared in one report in OUT."
        )
        return 0 if argv else 2
    out = None
    if "--out" in argv:
        i = argv.index("--out")
        if i + 1 >= len(argv):
            raise CompareError("--out needs a directory")
        out, argv = Path(argv[i + 1]), argv[:i] + argv[i + 2 :]
    bad = [a for a in argv if a.startswith("-")]
    if bad:
        raise CompareError(f"unknown option {bad[0]!r}; usage: anypo report DIR [DIR ...] [--out OUT]")
    where = render([Path(a) for a in argv], out)
    print(f"report: {where / 'report.md'} and {where / 'report.html'}")
    return 0
