"""The error surface of the ``anypo`` command (issue 10, item 10).

A user error prints one line, ``anypo: error: <message>``, on stderr and exits with 2, without a
traceback; ``--debug`` anywhere re-raises it with its traceback; anything else (a bug, a torch
failure) keeps its traceback. The config cases are caught by ``anypo.validate`` before any model is
loaded; the malformed data row is found when the task is built.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from anypo import cli
from anypo.errors import UserError

# small everything, so that a case that gets past validation still fails fast
FAST = ["--model.name", "tiny", "--steps", "1", "--prompts-per-step", "2", "--samples-per-prompt", "2",
        "--eval-every", "0", "--sampling.max-new-tokens", "4", "--no-progress"]  # fmt: skip


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("anypo: error: ")
    return lines[0]


def _train(tmp_path, *args: str) -> int:
    return cli.main(["train", "grpo", *FAST, "--out-dir", str(tmp_path / "runs"), *args])


def test_unknown_task_is_one_line(tmp_path, capsys):
    assert _train(tmp_path, "--task.name", "additon") == 2
    line = _one_error_line(capsys)
    assert "--task.name" in line and "'additon'" in line and "addition" in line


def test_missing_model_directory_is_one_line(tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    assert _train(tmp_path, "--model.name", str(missing)) == 2
    line = _one_error_line(capsys)
    assert "--model.name" in line and str(missing) in line


def test_malformed_jsonl_row_is_one_line(tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    rows = [json.dumps({"prompt": f"What is {i} + 1?", "answer": str(i + 1)}) for i in range(4)]
    rows.insert(2, '{"prompt": "What is 9 + 1?" "answer": "10"}')  # line 3: a comma is missing
    data.write_text("\n".join(rows) + "\n")
    assert _train(tmp_path, "--task.name", str(data), "--task.num-heldout", "1") == 2
    line = _one_error_line(capsys)
    assert "row 3" in line and "invalid JSON" in line and str(data) in line


def test_negative_learning_rate_is_one_line(tmp_path, capsys):
    assert _train(tmp_path, "--lr", "-1e-5") == 2
    line = _one_error_line(capsys)
    assert "--lr" in line and "> 0" in line
    assert not (tmp_path / "runs").exists()  # refused before a run directory (or a model) was made


def test_one_sample_per_prompt_with_grpo_is_one_line(tmp_path, capsys):
    assert _train(tmp_path, "--samples-per-prompt", "1") == 2
    line = _one_error_line(capsys)
    assert "--samples-per-prompt" in line and "group-relative" in line and "advantage 'grpo'" in line


def test_several_problems_are_listed_after_one_error_line(tmp_path, capsys):
    assert _train(tmp_path, "--lr", "-1", "--samples-per-prompt", "1", "--task.name", "nope") == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines[0] == "anypo: error: 3 problems:" and len(lines) == 4 and "Traceback" not in err


def test_debug_anywhere_reraises_the_user_error(tmp_path):
    with pytest.raises(UserError, match="--lr"):
        cli.main(["--debug", "train", "grpo", *FAST, "--lr", "-1e-5"])
    with pytest.raises(UserError, match="--lr"):
        cli.main(["train", "grpo", *FAST, "--lr", "-1e-5", "--debug"])


def test_internal_errors_keep_their_traceback(tmp_path, monkeypatch):
    """A failure that is not the user's (torch, or a bug in the loop) propagates: Python prints it (exit 1)."""
    import anypo.train

    def broken(cfg, resume=None):
        raise RuntimeError("simulated torch failure")

    monkeypatch.setattr(anypo.train, "train", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        _train(tmp_path)

    def buggy(cfg, resume=None):
        return {}["train/missing_metric"]  # a KeyError raised by the loop is a bug, not a user error

    monkeypatch.setattr(anypo.train, "train", buggy)
    with pytest.raises(KeyError):
        _train(tmp_path)


def test_console_exit_codes_and_stderr(tmp_path):
    """As a user sees it: exit 2 and one line; with --debug, exit 1 and the traceback."""
    cmd = [sys.executable, "-m", "anypo.cli", "train", "grpo", *FAST, "--lr", "-1e-5"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    plain = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert plain.returncode == 2, plain.stderr
    assert plain.stderr.strip().splitlines() == [plain.stderr.strip()] and "Traceback" not in plain.stderr
    assert plain.stderr.startswith("anypo: error: --lr is -1e-05")
    debug = subprocess.run([*cmd, "--debug"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "UserError" in debug.stderr
