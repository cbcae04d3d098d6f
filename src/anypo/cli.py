"""The ``anypo`` command: ``list``, ``eval``, ``train``.

anypo list
anypo eval --model.name smollm2-135m-instruct --task.name addition --samples 8
anypo train grpo --steps 30 --lr 1e-5
anypo train --resume runs/grpo-20261125-101500
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

USAGE = """usage: anypo {list,eval,train,compare,report} [options]

  list                      presets and registered parts, with their papers
  eval  [options]           pass@k of a model on a task's held-out split (anypo eval --help)
  train PRESET [options]    online RL with a preset (anypo train PRESET --help)
  train --resume RUN_DIR    continue a run from its latest checkpoint
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
    commands = {"list": cmd_list, "eval": cmd_eval, "train": cmd_train, "compare": cmd_compare, "report": cmd_report}
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


# `anypo train PRESET --smoke`: the tiny random model, 2 steps of 2 prompts x 4 samples, 8 new tokens,
# no evaluation. Every preset must run end to end like this in under a minute (CI runs them all).
SMOKE_ARGS = [
    "--model.name", "tiny", "--task.num-train", "64", "--task.num-heldout", "8", "--steps", "2",
    "--prompts-per-step", "2", "--samples-per-prompt", "4", "--micro-batch-size", "4",
    "--sampling.max-new-tokens", "8", "--eval-every", "0", "--save-every", "1", "--no-progress",
]  # fmt: skip


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
        t.add_row(name, p.title, p.arxiv, p.status)
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


def cmd_train(argv: list[str]) -> int:
    import tyro

    from anypo.algorithms import PRESETS
    from anypo.config import TrainConfig, from_jsonable
    from anypo.train import train
    from anypo.validate import check_train_config

    if argv and argv[0] == "--resume":
        if len(argv) != 2:
            print("usage: anypo train --resume RUN_DIR", file=sys.stderr)
            return 2
        run_dir = Path(argv[1])
        if not (run_dir / "config.json").exists():
            print(f"anypo: {run_dir} is not a run directory (no config.json)", file=sys.stderr)
            return 2
        cfg = from_jsonable(json.loads((run_dir / "config.json").read_text()))
        check_train_config(cfg)  # before any model is loaded
        out = train(cfg, resume=run_dir)
    else:
        presets = {
            name: (f"{p.title} (arXiv {p.arxiv}, {p.status})", TrainConfig(algo=p.build(), name=name, preset=name))
            for name, p in sorted(PRESETS.items())
        }
        if "--smoke" in argv:  # the smallest end-to-end run; options given after it still win
            argv = [a for a in argv if a != "--smoke"]
            argv = argv[:1] + SMOKE_ARGS + argv[1:]
        cfg = tyro.extras.overridable_config_cli(presets, args=argv, prog="anypo train")
        check_train_config(cfg)  # before any model is loaded
        out = train(cfg)
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
