"""The ``anypo`` command: ``list``, ``eval``, ``train``, ``pairs``, ``compare``, ``report``.

anypo list
anypo eval --model.name smollm2-135m-instruct --task.name addition --samples 8
anypo train grpo --steps 30 --lr 1e-5
anypo train --resume runs/grpo-20261125-101500
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

USAGE = """usage: anypo {list,eval,train,pairs,compare,report} [options]

  list                      presets and registered parts, with their papers
  eval  [options]           pass@k of a model on a task's held-out split (anypo eval --help)
  train PRESET [options]    train with a preset, in the loop of its kind (online RL, preference; anypo train PRESET --help)
  train --resume RUN_DIR    continue a run from its latest checkpoint
  pairs [options]           a preference dataset (JSONL) from a policy's samples, judged by an oracle (anypo pairs --help)
  compare PRESET PRESET ... [--seeds 0 1 2] [--budget steps|tokens|seconds N] [overrides]
                            every preset x seed on the same workload, one report (anypo compare --help)
  compare --resume DIR      finish an interrupted compare
  report DIR                re-render report.md + report.html of a compare or run directory from its logs

  --debug (anywhere)        show the traceback of a user error (bad option, missing file, malformed row)
"""


def main(argv: list[str] | None = None) -> int:
    """Run one ``anypo`` command; returns the exit code.

    A user error (a bad option, a missing file, a malformed data row: see ``anypo.errors``) prints
    ``anypo: error: <message>`` on stderr and returns 2, without a traceback; ``--debug`` anywhere in
    ``argv`` re-raises it with its traceback. Any other exception keeps its traceback (exit code 1).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]  # before the subcommand parses its options
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    commands = {
        "list": cmd_list,
        "eval": cmd_eval,
        "train": cmd_train,
        "pairs": cmd_pairs,
        "compare": cmd_compare,
        "report": cmd_report,
    }
    if cmd not in commands:
        import difflib

        close = difflib.get_close_matches(cmd, commands, n=1)
        print(
            f"anypo: unknown command {cmd!r}" + (f"; did you mean {close[0]!r}?" if close else "") + "\n\n" + USAGE,
            file=sys.stderr,
        )
        return 2
    try:
        return commands[cmd](rest)
    except Exception as e:
        from anypo.errors import is_user_error, message

        if debug or not is_user_error(e):
            raise
        print(f"anypo: error: {message(e)}", file=sys.stderr)
        return 2


# `anypo train PRESET --smoke`: the tiny random model, 2 steps, no evaluation, at the smallest size of
# the preset's loop (online RL: 2 prompts x 4 samples, 8 new tokens; preference: 4 built-in pairs per
# step in micro-batches of 2). Every preset must run end to end like this in under a minute (CI runs them all).
SMOKE_ARGS = [
    "--model.name", "tiny", "--task.num-train", "64", "--task.num-heldout", "8", "--steps", "2",
    "--prompts-per-step", "2", "--samples-per-prompt", "4", "--micro-batch-size", "4",
    "--sampling.max-new-tokens", "8", "--eval-every", "0", "--save-every", "1", "--no-progress",
]  # fmt: skip
PREFERENCE_SMOKE_ARGS = [
    "--model.name", "tiny", "--data.num-train", "64", "--data.num-heldout", "8", "--steps", "2",
    "--pairs-per-step", "4", "--micro-batch-size", "2", "--eval-every", "0", "--save-every", "1", "--no-progress",
]  # fmt: skip
PREFERENCE_ONLINE_SMOKE_ARGS = [
    "--model.name", "tiny", "--task.num-train", "64", "--task.num-heldout", "8", "--steps", "2",
    "--prompts-per-step", "2", "--micro-batch-size", "2", "--sampling.max-new-tokens", "8",
    "--oracle.kind", "intransitive", "--eval-every", "0", "--save-every", "1", "--no-progress",
]  # fmt: skip
SMOKE_ARGS_BY_KIND = {
    "online": SMOKE_ARGS,
    "preference": PREFERENCE_SMOKE_ARGS,
    "preference_online": PREFERENCE_ONLINE_SMOKE_ARGS,
    "reward_model": PREFERENCE_SMOKE_ARGS,
}

# The loop of each preset kind: (module:config class, module:train function). The CLI picks the loop
# by the preset's ``kind`` (and on --resume by the saved config's class), never by a method's name.
LOOPS = {
    "online": ("anypo.config:TrainConfig", "anypo.train:train"),
    "preference": ("anypo.train_pref:PrefTrainConfig", "anypo.train_pref:train"),
    "preference_online": ("anypo.train_pref_online:OnlinePrefTrainConfig", "anypo.train_pref_online:train"),
    "reward_model": ("anypo.train_rm:RMTrainConfig", "anypo.train_rm:train"),
}


def _load(spec: str):
    import importlib

    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _kind_of(cfg) -> str | None:
    """The kind of loop whose config class ``cfg`` is (None: not a training config)."""
    return next((k for k in LOOPS if isinstance(cfg, loop_of(k)[0])), None)


def loop_of(kind: str) -> tuple[type, object]:
    """(config class, train function) of the loop that runs presets of ``kind``."""
    if kind not in LOOPS:
        raise NotImplementedError(f"presets of kind {kind!r} have no training loop yet (known: {', '.join(LOOPS)})")
    config, train = LOOPS[kind]
    return _load(config), _load(train)


def train_fn(cfg):
    """The function that trains ``cfg``: its loop's, or ``anypo.distributed.train`` when the config asks for
    distributed execution (``--dist.backend`` other than none; that function checks the value)."""
    dist = getattr(cfg, "dist", None)
    if dist is not None and dist.backend != "none":
        from anypo.distributed import train

        return train
    return loop_of(_kind_of(cfg))[1]


def preset_record(name: str, p) -> dict:
    """What `anypo list --json` prints for one preset."""
    return {
        "name": name,
        "title": p.title,
        "arxiv": p.arxiv,
        "status": p.status,
        "kind": p.kind,
        "docs": f"docs/algorithms/{name}.md",
        "summary": p.summary,
    }


def cmd_list(argv: list[str]) -> int:
    if argv and argv[0] == "--json":
        from anypo.algorithms import PRESETS

        print(json.dumps([preset_record(n, p) for n, p in sorted(PRESETS.items())], indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    from anypo import registry
    from anypo.algorithms import PRESETS

    console = Console()
    t = Table(title="presets (anypo train <preset>)")
    for col in ("preset", "paper", "arXiv", "status"):
        t.add_column(col)
    for name, p in sorted(PRESETS.items()):
        t.add_row(name, p.title, p.arxiv or "-", p.status)
    console.print(t)
    for kind in registry.REGISTRIES:
        try:
            reg = registry.registry(kind)
        except ImportError:
            continue
        if not reg.names():
            continue
        t = Table(title=f"{kind} parts")
        t.add_column("name")
        t.add_column("config")
        t.add_column("paper")
        for name in reg.names():
            cls = reg.get(name)[1]
            doc = (cls.__doc__ or "").strip().splitlines()
            t.add_row(name, cls.__name__, doc[0] if doc else "")
        console.print(t)
    return 0


def cmd_eval(argv: list[str]) -> int:
    import tyro

    from anypo.config import EvalConfig
    from anypo.eval_run import run_eval

    cfg = tyro.cli(EvalConfig, args=argv, prog="anypo eval", description=EvalConfig.__doc__)
    run_dir = run_eval(cfg)
    print((run_dir / "README.md").read_text())
    return 0


def cmd_pairs(argv: list[str]) -> int:
    import tyro

    from anypo.pref_pairs import PairsConfig, generate_pairs

    cfg = tyro.cli(PairsConfig, args=argv, prog="anypo pairs", description=PairsConfig.__doc__)
    out = generate_pairs(cfg)
    meta = json.loads(out.with_name(out.name + ".meta.json").read_text())
    print(
        f"{out}: {meta['pairs']} pairs from {meta['prompts']} prompts ({meta['tied_prompts']} tied, "
        f"{meta['unjudged_prompts']} unjudged; {meta['generated_tokens']} tokens sampled in {meta['seconds']:.0f} s)"
    )
    return 0


def cmd_train(argv: list[str]) -> int:
    import tyro

    from anypo.algorithms import PRESETS
    from anypo.config import from_jsonable

    if argv and argv[0] == "--resume":
        extra = argv[2:]
        if len(argv) < 2 or any(a.startswith("--") and not a.startswith("--dist.") for a in extra):
            print(
                "usage: anypo train --resume RUN_DIR [--dist.* ...]  (only where the run executes may change on "
                "resume, e.g. --dist.backend none or --dist.learners 2; what it computes stays as config.json says)",
                file=sys.stderr,
            )
            return 2
        run_dir = Path(argv[1])
        if not (run_dir / "config.json").exists():
            print(f"anypo: {run_dir} is not a run directory (no config.json)", file=sys.stderr)
            return 2
        cfg = from_jsonable(json.loads((run_dir / "config.json").read_text()))
        kind = _kind_of(cfg)
        if kind is None:
            print(f"anypo: {run_dir}/config.json is not the config of a training run", file=sys.stderr)
            return 2
        if extra:
            import dataclasses

            if not hasattr(cfg, "dist"):
                print(f"anypo: {run_dir} is a {kind} run, which has no --dist.* options", file=sys.stderr)
                return 2
            dist = tyro.cli(
                type(cfg.dist),
                args=[a.replace("--dist.", "--", 1) if a.startswith("--dist.") else a for a in extra],
                default=cfg.dist,
                prog="anypo train --resume RUN_DIR",
            )
            cfg = dataclasses.replace(cfg, dist=dist)
        out = train_fn(cfg)(cfg, resume=run_dir)  # each loop checks its config before any model is loaded
    else:
        presets = {}
        for name, p in sorted(PRESETS.items()):
            paper = f"arXiv {p.arxiv}" if p.arxiv else "not on arXiv"
            config_cls = loop_of(p.kind)[0]
            presets[name] = (
                f"{p.title} ({paper}, {p.status}; {p.kind})",
                config_cls(algo=p.build(), name=name, preset=name),
            )
        if "--smoke" in argv:  # the smallest end-to-end run; options given after it still win
            argv = [a for a in argv if a != "--smoke"]
            kind = PRESETS[argv[0]].kind if argv and argv[0] in PRESETS else "online"
            argv = argv[:1] + SMOKE_ARGS_BY_KIND[kind] + argv[1:]
        cfg = tyro.extras.overridable_config_cli(presets, args=argv, prog="anypo train")
        out = train_fn(cfg)(cfg)  # each loop checks its config before any model is loaded
    print(f"run directory: {out}")
    print((out / "README.md").read_text())
    return 0


def cmd_compare(argv: list[str]) -> int:
    """``anypo compare``: launches ``anypo train`` subprocesses and reads their files (no torch here)."""
    from anypo.compare import main

    return main(argv)


def cmd_report(argv: list[str]) -> int:
    """``anypo report DIR``: report.md + report.html from a compare or run directory's logs."""
    from anypo.report import main

    return main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
