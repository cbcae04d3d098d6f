"""Run every preset for the same number of steps on the embedded model and write the results.

Fills the ``## Result`` section of each ``docs/algorithms/<preset>.md`` page and writes
``docs/algorithms/presets_reward.png`` (reward curves side by side) and ``docs/algorithms/results.json``.

    python scripts/preset_results.py --steps 30 --out-dir runs/presets            # all presets
    python scripts/preset_results.py --presets grpo sapo --steps 30                # some
    python scripts/preset_results.py --presets sapo --minibatch-prompts 1          # off-policy updates
    python scripts/preset_results.py --from-runs runs/compare-explore-*/runs/*     # sections from finished runs

``--from-runs`` trains nothing: it writes the sections of runs that already finished (for example the
runs of an ``anypo compare``), with the settings read from each run's ``config.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import time
from pathlib import Path

from anypo.algorithms import PRESETS
from anypo.config import TrainConfig
from anypo.engines.base import SamplingConfig
from anypo.runs import read_jsonl
from anypo.stats import trailing_mean
from anypo.train import train

DOCS = Path(__file__).resolve().parents[1] / "docs" / "algorithms"


def settings(args) -> dict:
    return {
        "steps": args.steps,
        "prompts_per_step": args.prompts,
        "samples_per_prompt": args.samples,
        "lr": args.lr,
        "sampling": SamplingConfig(max_new_tokens=args.max_new_tokens),
        "eval_every": args.eval_every or args.steps,
        "eval_prompts": args.eval_prompts,
        "eval_samples": args.eval_samples,
        "save_every": args.steps,
        "out_dir": args.out_dir,
        "progress": False,
    }


def command(name: str, args) -> str:
    mb = f" --algo.minibatch-prompts {args.minibatch_prompts}" if args.minibatch_prompts else ""
    if getattr(args, "seed", 0):
        mb += f" --seed {args.seed}"
    if args.eval_samples > 1:
        mb += f" --eval-samples {args.eval_samples}"
    if not getattr(args, "eval_at_start", True):
        mb += " --no-eval-at-start"
    task = getattr(args, "task", "addition")
    if task != "addition":
        mb += f" --task.name {task}" + (f" --task.num-train {args.num_train}" if args.num_train else "")
    if getattr(args, "budget_tokens", 0):
        mb += f" --budget-tokens {args.budget_tokens}"
    if getattr(args, "threads", 2) != 2:
        mb += f" --threads {args.threads}"
    return (
        f"anypo train {name} --steps {args.max_steps if getattr(args, 'budget_tokens', 0) else args.steps} --prompts-per-step {args.prompts} --samples-per-prompt {args.samples} "
        f"--lr {args.lr} --sampling.max-new-tokens {args.max_new_tokens} --eval-every {args.eval_every or args.steps} --eval-prompts {args.eval_prompts}"
        + mb
    )


# the metric that shows a method's mechanism acting, when its loss logs it
MECHANISM = [
    ("policy/clipfrac", "clip fraction"),
    ("policy/gate_weight", "gate weight"),
    ("policy/gate_damping_min", "gate damping min"),
    ("policy/ratio_min", "ratio min"),
    ("policy/ratio_max", "ratio max"),
    ("response/length_correct_mean", "length of correct"),
]
# what a method exists to change, beyond the clip/gate diagnostics (issue 12: the curve per method)
EXTRA = {
    "bnpo": [("advantage/abs_mean", "mean abs advantage"), ("train/grad_norm", "grad norm")],
    "drpo": [("drpo/penalty_frac", "KL hinge active")],
    "epo": [("epo/out_of_band_frac", "out of entropy band"), ("epo/phase_weight", "phase weight")],
    "llds": [("llds/penalized_frac", "LLDS hinge active"), ("llds/loss", "LLDS loss")],
    "lp_reg": [("lp_reg/regularized_frac", "Lp-Reg active"), ("lp_reg/loss", "Lp-Reg loss")],
    "grpo": [("advantage/abs_mean", "mean abs advantage"), ("train/grad_norm", "grad norm")],
}
# what every run on a difficulty-graded task shows (curricula exist to change these)
GRADED = [
    ("rollout/mixed_correct_group_frac", "groups right and wrong"),
    ("rollout/generated_tokens_total", "tokens so far"),
]
TASK_TEXT = {
    "addition": "2-digit addition",
    "addition_proxy": "2-digit addition trained on a hackable proxy reward (`addition_proxy`: the sum anywhere in "
    "the response; pass@k and the accuracy column use the strict true reward)",
    "graded_arithmetic": "the difficulty-graded arithmetic mix (`graded_arithmetic`: 2-digit addition up to "
    "three 5-digit operands with + and -, 4 levels)",
}


def pref_settings(args) -> dict:
    return {
        "steps": args.steps,
        "pairs_per_step": args.pairs,
        "micro_batch_size": min(8, args.pairs),
        "lr": args.pref_lr,
        "eval_every": args.steps,
        "eval_prompts": args.eval_prompts,
        "eval_samples": args.eval_samples,
        "save_every": args.steps,
        "out_dir": args.out_dir,
        "progress": False,
    }


def pref_command(name: str, args) -> str:
    return (
        f"anypo train {name} --steps {args.steps} --pairs-per-step {args.pairs} --micro-batch-size "
        f"{min(8, args.pairs)} --lr {args.pref_lr} --eval-every {args.steps} --eval-prompts {args.eval_prompts}"
        + (f" --eval-samples {args.eval_samples}" if args.eval_samples > 1 else "")
    )


PREF_COLUMNS = [
    ("pref/loss", "loss"),
    ("pref/accuracy", "accuracy"),
    ("pref/reward_margin", "reward margin"),
    ("pref/reward_chosen", "reward chosen"),
    ("pref/reward_rejected", "reward rejected"),
    ("pref/logps_chosen", "logp chosen"),
    ("pref/nll", "NLL chosen"),
]


def minutes_of(wall: float, wall_what: str = "") -> str:
    """``wall`` seconds as the Results say it: "3.9 min", or "3.9 min of <what>" when what was timed is named."""
    return f"{wall / 60:.1f} min" + (f" of {wall_what}" if wall_what else "")


def pref_result_section(name: str, rows: list[dict], args, wall: float, wall_what: str = "") -> str:
    """Result of a preference preset: pair metrics over training, held-out pair accuracy and pass@1."""
    train_rows = [r for r in rows if "pref/loss" in r]
    every = max(len(train_rows) // 6, 1)
    picked = [r for i, r in enumerate(train_rows) if i % every == 0 or i == len(train_rows) - 1]
    cols = [(k, label) for k, label in PREF_COLUMNS if any(k in r for r in train_rows)]
    ev = {r["step"]: r for r in rows if any(k.startswith("eval/") for k in r)}
    first, last = ev.get(0, {}), ev.get(args.steps, {})
    nan = float("nan")
    k = args.eval_samples

    def pair(key: str) -> str:
        return f"{first.get(key, nan):.2f} before, {last.get(key, nan):.2f} after"

    lines = [
        "## Result",
        "",
        f"Embedded SmolLM2-135M-Instruct, the built-in addition pairs (a correct worked answer against the same "
        f"answer with a wrong result), {args.steps} steps of {args.pairs} pairs, lr {args.pref_lr}, seed 0, on a "
        f"2-core CPU ({minutes_of(wall, wall_what)}). Held-out pair accuracy (the implicit reward ranks chosen above "
        f"rejected): {pair('eval/accuracy')}; held-out pass@1 of sampled answers ({args.eval_prompts} prompts, "
        f"temperature 0.7): {pair('eval/pass@1')}" + (f"; pass@{k}: {pair(f'eval/pass@{k}')}" if k > 1 else "") + ".",
        "",
        "| step | " + "".join(f"{label} | " for _, label in cols),
        "|---|" + "---|" * len(cols),
    ]
    for r in picked:
        lines.append(f"| {r['step']} |" + "".join(f" {r.get(key, nan):.4f} |" for key, _ in cols))
    lines += ["", "Reproduce:", "", "```bash", pref_command(name, args), "```", ""]
    return "\n".join(lines)


ORACLE_TEXT = {
    "intransitive": "the intransitive oracle (majority of three graded criteria: correct, within the length "
    "budget, answer format; it has Condorcet cycles)",
    "verifier_bt": "the verifier Bradley-Terry oracle (sigmoid of the reward difference)",
}
PREF_ONLINE_EVAL = [
    ("eval/win_rate_vs_init", "win rate vs initial"),
    ("eval/gold", "gold"),
    ("eval/kl_ref", "KL to initial"),
    ("eval/exploitability", "exploitability"),
    ("eval/nash_tv", "TV to Nash"),
]
PREF_ONLINE_TRAIN = [
    ("data/pairs", "pairs"),
    ("pref/loss", "loss"),
    ("pref/accuracy", "accuracy"),
    ("pref/reward_margin", "reward margin"),
    ("data/gold", "gold of samples"),
]


def run_command(run: Path) -> str | None:
    """``anypo train ...`` of a run made by ``anypo compare`` (its compare.json keeps each run's arguments
    without --out-dir, which the launcher adds)."""
    compare_json = run.parent.parent / "compare.json"
    if not compare_json.exists():
        return None
    for r in json.loads(compare_json.read_text())["runs"]:
        if r.get("run_dir") and (run.parent.parent / r["run_dir"]).resolve() == run.resolve():
            return "anypo train " + " ".join(r["args"])
    return None


def pref_online_section(run: Path, rows: list[dict]) -> str:
    """Result of an online preference run (kind ``preference_online``): the held-out oracle evaluation at
    every evaluation step and the training pairs' metrics, from the run's own files."""
    cfg = json.loads((run / "config.json").read_text())
    algo, oracle = cfg["algo"], cfg.get("oracle", {}).get("kind", "verifier_bt")
    train_rows = [r for r in rows if "pref/loss" in r or "data/pairs" in r]
    evals = [r for r in rows if "eval/win_rate_vs_init" in r]
    if not evals or evals[-1]["step"] != cfg["steps"]:
        raise SystemExit(f"{run}: not finished (no held-out evaluation at step {cfg['steps']})")
    wall = sum(r.get("time/step_s", 0.0) for r in train_rows)
    nan = float("nan")
    ecols = [(k, label) for k, label in PREF_ONLINE_EVAL if any(k in r for r in evals)]
    tcols = [(k, label) for k, label in PREF_ONLINE_TRAIN if any(k in r for r in train_rows)]
    every = max(len(train_rows) // 6, 1)
    picked = [r for i, r in enumerate(train_rows) if i % every == 0 or i == len(train_rows) - 1]
    first, last = evals[0], evals[-1]
    lines = [
        "## Result",
        "",
        f"Embedded SmolLM2-135M-Instruct, {TASK_TEXT.get(cfg['task']['name'], cfg['task']['name'])}, judged by "
        f"{ORACLE_TEXT.get(oracle, oracle)}; {cfg['steps']} steps of {cfg['prompts_per_step']} prompts x "
        f"{algo['samples_per_prompt']} samples (pairing `{algo['pairing']}`), lr {cfg['lr']}, at most "
        f"{cfg['sampling']['max_new_tokens']} new tokens, seed {cfg['seed']}, {cfg.get('threads') or 2} thread(s) "
        f"on a 2-core CPU ({wall / 60:.1f} min of training steps, evaluations excluded). Held-out "
        f"({cfg['eval_prompts']} prompts, {cfg['eval_candidates']} fixed candidates of the initial policy per "
        f"prompt for the Nash): win rate against the initial policy {first.get('eval/win_rate_vs_init', nan):.3f} "
        f"at step {first['step']}, {last.get('eval/win_rate_vs_init', nan):.3f} after step {last['step']}; "
        f"exploitability {first.get('eval/exploitability', nan):.3f} -> {last.get('eval/exploitability', nan):.3f}.",
        "",
        "Held-out evaluations:",
        "",
        "| step | " + "".join(f"{label} | " for _, label in ecols),
        "|---|" + "---|" * len(ecols),
    ]
    for r in evals:
        lines.append(f"| {r['step']} |" + "".join(f" {r.get(k, nan):.3f} |" for k, _ in ecols))
    lines += ["", "Training pairs:", "", "| step | " + "".join(f"{label} | " for _, label in tcols)]
    lines.append("|---|" + "---|" * len(tcols))
    for r in picked:
        cells = (f"{r.get(k, nan):.0f}" if k == "data/pairs" else _cell(r.get(k, nan)) for k, _ in tcols)
        lines.append(f"| {r['step']} |" + "".join(f" {c} |" for c in cells))
    cmd = run_command(run)
    if cmd:
        lines += ["", "Reproduce:", "", "```bash", cmd, "```"]
    lines += ["", "The figure of the online preference methods side by side: [preference.md](../preference.md).", ""]
    return "\n".join(lines)


def result_section(name: str, rows: list[dict], args, wall: float, wall_what: str = "") -> str:
    train_rows = [r for r in rows if "reward/mean" in r]
    evals = {r["step"]: r["eval/pass@1"] for r in rows if "eval/pass@1" in r}
    k = args.eval_samples
    evals_k = {r["step"]: r[f"eval/pass@{k}"] for r in rows if f"eval/pass@{k}" in r}
    every = max(len(train_rows) // 6, 1)
    picked = [r for i, r in enumerate(train_rows) if i % every == 0 or i == len(train_rows) - 1]
    has_kl = "kl/ref" in train_rows[0]
    task = getattr(args, "task", "addition")
    own = EXTRA.get(name, []) + (GRADED if task.startswith("graded") else [])
    mech = [(k, label) for k, label in MECHANISM + own if any(k in r for r in train_rows)]
    updates = max(r.get("train/optimizer_steps", 1.0) for r in train_rows)  # a step without signal has 0
    seed = getattr(args, "seed", 0)
    wall_text = minutes_of(wall, wall_what)
    nan = float("nan")
    if 0 in evals:
        when, first_step = "before", 0
    else:  # --no-eval-at-start: the first evaluation comes after some training
        first_step = min(evals, default=args.steps)
        when = f"at step {first_step}"

    def before_after(ev: dict[int, float]) -> str:
        if first_step == args.steps:  # one evaluation, at the end
            return f"{ev.get(args.steps, nan):.2f} after step {args.steps}"
        return f"{ev.get(first_step, nan):.2f} {when}, {ev.get(args.steps, nan):.2f} after"

    mb_text = (
        f"mini-batches of {args.minibatch_prompts} prompt(s), {updates:.0f} optimizer steps per rollout"
        if args.minibatch_prompts
        else f"{updates:.0f} optimizer step(s) per rollout"
    )
    lines = [
        "## Result",
        "",
        f"Embedded SmolLM2-135M-Instruct, {TASK_TEXT.get(task, task)}"
        + (f" ({args.num_train} training prompts)" if getattr(args, "num_train", None) else "")
        + (
            f", a budget of {args.budget_tokens} generated tokens ({args.steps} steps)"
            if getattr(args, "budget_tokens", 0)
            else f", {args.steps} steps"
        )
        + f" of {args.prompts} prompts x "
        f"{args.samples} samples, lr {args.lr}, at most {args.max_new_tokens} new tokens, seed {seed}, on a 2-core CPU "
        f"({wall_text}). Held-out pass@1 ({args.eval_prompts} prompts, temperature 0.7): {before_after(evals)}"
        + (f"; pass@{k} ({k} samples per prompt): {before_after(evals_k)}" if k > 1 else "")
        + f"; {mb_text}."
        + levels_text(rows, args.steps),
        "",
        "| step | reward mean | accuracy | response length | entropy | "
        + ("KL to ref | " if has_kl else "")
        + "".join(f"{label} | " for _, label in mech),
        "|---|---|---|---|---|" + ("---|" if has_kl else "") + "---|" * len(mech),
    ]
    for r in picked:
        kl = f" {r['kl/ref']:.4f} |" if has_kl else ""
        extra = "".join(f" {_cell(r.get(k, nan))} |" for k, _ in mech)
        lines.append(
            f"| {r['step']} | {r['reward/mean']:.3f} | {r.get('reward/accuracy', nan):.3f} | "
            f"{r['response/length_mean']:.1f} | {r.get('policy/entropy', nan):.3f} |{kl}{extra}"
        )
    lines += [
        "",
        "Reproduce:",
        "",
        "```bash",
        getattr(args, "command", None) or command(name, args),  # a compare run's own arguments, when known
        "```",
        "",
        "![rewards of every preset](presets_reward.png)"
        if task == "addition"
        else "The figure of every method of this family on this workload: [curricula.md](../curricula.md).",
        "",
    ]
    return "\n".join(lines)


def _cell(v: float) -> str:
    """Four decimals, or a whole number for counts (tokens so far)."""
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.4f}"


def levels_text(rows: list[dict], step: int) -> str:
    """' Held-out pass@1 by level after: 0.41 (level 0), ...' when the evaluation split reports levels."""
    last = next((r for r in rows if r.get("step") == step and "eval/pass@1" in r), {})
    levels = sorted(int(k.rsplit("_", 1)[1]) for k in last if k.startswith("eval/pass@1/level_"))
    if not levels:
        return ""
    parts = ", ".join(f"{last[f'eval/pass@1/level_{lv}']:.2f} (level {lv})" for lv in levels)
    return f" Held-out pass@1 by level after: {parts}."


def write_section(name: str, section: str) -> None:
    page = DOCS / f"{name}.md"
    text = page.read_text()
    text = (
        re.sub(r"## Result\n.*?(?=\n## |\Z)", section, text, flags=re.S)
        if "## Result" in text
        else text + "\n" + section
    )
    page.write_text(text)


def plot(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, rows) in enumerate(sorted(results.items())):
        pts = [(r["step"], r["reward/mean"]) for r in rows if "reward/mean" in r]
        ys = trailing_mean([y for _, y in pts], 5)  # 4 x 8 samples per step are noisy
        # 10 colours, then the next line style: no two presets share colour and style
        ax.plot([p[0] for p in pts], ys, label=name, color=f"C{i % 10}", linestyle=["-", "--", ":"][i // 10 % 3])
    ax.set_xlabel("step")
    ax.set_ylabel("reward (5-step moving mean)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(DOCS / "presets_reward.png", dpi=110)


def args_of_run(run: Path, rows: list[dict]) -> argparse.Namespace:
    """The settings of a finished online run (its config.json; ``rows``, its metrics, give the last step
    of a run a token budget ended), in the shape of this script's args."""
    cfg = json.loads((run / "config.json").read_text())
    task = cfg.get("task", {}).get("name", "addition")
    if task not in TASK_TEXT:
        raise SystemExit(f"{run}: no Result text for task {task!r}; add it to TASK_TEXT")
    steps = cfg["steps"]
    if cfg.get("budget_tokens"):  # the budget ends the run: its last trained step
        steps = max(r["step"] for r in rows if "reward/mean" in r)
    return argparse.Namespace(
        steps=steps,
        max_steps=cfg["steps"],
        budget_tokens=cfg.get("budget_tokens", 0),
        task=task,
        num_train=cfg["task"].get("num_train"),
        threads=cfg.get("threads", 2),
        prompts=cfg["prompts_per_step"],
        samples=cfg["samples_per_prompt"],
        lr=cfg["lr"],
        max_new_tokens=cfg["sampling"]["max_new_tokens"],
        eval_every=cfg["eval_every"],
        eval_prompts=cfg["eval_prompts"],
        eval_samples=cfg["eval_samples"],
        minibatch_prompts=cfg["algo"].get("minibatch_prompts"),
        seed=cfg["seed"],
        eval_at_start=cfg.get("eval_at_start", True),
    )


def pref_args_of_run(run: Path) -> argparse.Namespace:
    """The settings of a finished offline preference run (its config.json), in the shape of this script's args."""
    cfg = json.loads((run / "config.json").read_text())
    return argparse.Namespace(
        steps=cfg["steps"],
        pairs=cfg["pairs_per_step"],
        pref_lr=cfg["lr"],
        # the evaluation samples the held-out pairs' prompts: at most num_heldout of them
        eval_prompts=min(cfg["eval_prompts"], cfg.get("data", {}).get("num_heldout") or cfg["eval_prompts"]),
        eval_samples=cfg["eval_samples"],
    )


def with_note(section: str, note: str) -> str:
    """``section`` with the paragraph ``note`` put after its heading (unchanged when ``note`` is empty)."""
    return section.replace("\n\n", f"\n\n{note}\n\n", 1) if note else section


def from_runs(runs: list[Path], note: str = "") -> None:
    """Write the Result section of each finished run's preset (wall time: the sum of its step times and
    evaluations are not in it, so it is given as training time)."""
    summary_path = DOCS / "results.json"
    results = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    for run in runs:
        name = json.loads((run / "config.json").read_text())["preset"]
        rows = read_jsonl(run / "metrics.jsonl")
        if PRESETS[name].kind == "preference_online":
            section = pref_online_section(run, rows)
            write_section(name, with_note(section, note))
            print(f"{name}: section written from {run}", flush=True)
            continue
        if PRESETS[name].kind == "preference":
            pargs = pref_args_of_run(run)
            if not any(r.get("step") == pargs.steps and "eval/accuracy" in r for r in rows):
                raise SystemExit(f"{run}: not finished (no held-out evaluation at step {pargs.steps})")
            wall = sum(r.get("time/step_s", 0.0) for r in rows)
            section = pref_result_section(name, rows, pargs, wall, wall_what="training time, evaluations excluded")
            write_section(name, with_note(section, note))
            print(f"{name}: section written from {run}", flush=True)
            continue
        args = args_of_run(run, rows)
        args.command = run_command(run)  # every option the run had (a preset override too), not a rebuilt line
        if not any(r.get("step") == args.steps and "eval/pass@1" in r for r in rows):
            raise SystemExit(f"{run}: not finished (no held-out evaluation at step {args.steps})")
        wall = sum(r.get("time/step_s", 0.0) for r in rows)
        if args.task == "addition":  # presets_reward.png puts the addition runs side by side
            results[name] = rows
        section = result_section(name, rows, args, wall, wall_what="training time, evaluations excluded")
        write_section(name, with_note(section, note))
        print(f"{name}: section written from {run}", flush=True)
    summary_path.write_text(json.dumps(results))
    plot(results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="*", default=sorted(PRESETS))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--eval-prompts", type=int, default=100)
    ap.add_argument("--pairs", type=int, default=16, help="preference presets: pairs per step")
    ap.add_argument("--pref-lr", type=float, default=5e-6, help="preference presets: learning rate")
    ap.add_argument(
        "--eval-every", type=int, default=0, help="held-out evaluation every N steps (0: only before and after)"
    )
    ap.add_argument("--eval-samples", type=int, default=1, help="samples per held-out prompt (pass@k for this k)")
    ap.add_argument("--out-dir", default="runs/presets")
    ap.add_argument("--minibatch-prompts", type=int, default=None, help="override the presets' mini-batch size")
    ap.add_argument(
        "--from-runs", nargs="+", type=Path, help="finished run directories: write their sections, train nothing"
    )
    ap.add_argument("--note", default="", help="with --from-runs: a paragraph put first in each section written")
    args = ap.parse_args()
    if args.from_runs:
        from_runs(args.from_runs, args.note)
        return
    summary_path = DOCS / "results.json"
    results = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    for name in args.presets:
        t0 = time.perf_counter()
        if PRESETS[name].kind == "preference":
            from anypo.train_pref import PrefTrainConfig
            from anypo.train_pref import train as train_pref

            cfg = dataclasses.replace(
                PrefTrainConfig(algo=PRESETS[name].build(), name=name, preset=name), **pref_settings(args)
            )
            run = train_pref(cfg)
            rows = read_jsonl(run / "metrics.jsonl")
            wall = time.perf_counter() - t0
            write_section(name, pref_result_section(name, rows, args, wall))
            print(f"{name}: {wall:.0f} s, run {run}", flush=True)
            continue
        algo = PRESETS[name].build()
        if args.minibatch_prompts:
            algo = dataclasses.replace(algo, minibatch_prompts=args.minibatch_prompts)
        cfg = dataclasses.replace(TrainConfig(algo=algo, name=name, preset=name), **settings(args))
        run = train(cfg)
        rows = read_jsonl(run / "metrics.jsonl")
        wall = time.perf_counter() - t0
        results[name] = rows
        write_section(name, result_section(name, rows, args, wall))
        summary_path.write_text(json.dumps(results))
        print(f"{name}: {wall:.0f} s, run {run}", flush=True)
    plot(results)


if __name__ == "__main__":
    main()
