import pytest

from anypo import cli
from anypo.algorithms import PRESETS


def test_list_shows_every_preset_with_paper_and_status(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name, p in PRESETS.items():
        assert name in out and p.arxiv in out
    assert "reconstructed" in out and "verified" in out
    for part in ("ppo_clip", "gspo", "sapo", "grpo", "dynamic_sampling", "math_answer"):
        assert part in out


def test_unknown_command_suggests_close_match(capsys):
    assert cli.main(["trian"]) == 2
    assert "did you mean 'train'" in capsys.readouterr().err


def test_train_option_typo_lists_close_matches(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "grpo", "--stpes", "3"])
    assert e.value.code != 0
    err = capsys.readouterr()
    text = err.out + err.err
    assert "--stpes" in text and "--steps" in text


def test_eval_nested_option_typo_lists_close_matches(capsys):
    with pytest.raises(SystemExit):
        cli.main(["eval", "--task.nmae", "addition"])
    text = "".join(capsys.readouterr())
    assert "--task.name" in text


def test_unknown_preset_is_rejected(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "grpoo"])
    text = "".join(capsys.readouterr())
    assert "grpo" in text


def test_resume_needs_a_run_directory(tmp_path, capsys):
    assert cli.main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_every_config_field_has_help():
    """Attribute docstrings become --help text: every field of the run configs has one."""
    import dataclasses

    from tyro._docstrings import get_field_docstring

    from anypo.config import AlgoConfig, EvalConfig, TrainConfig
    from anypo.engines.base import SamplingConfig
    from anypo.models import ModelConfig
    from anypo.tasks import TaskConfig

    @dataclasses.dataclass
    class Control:
        undocumented: int = 0
        documented: int = 0
        """has help"""

    # negative control: the check can see a missing docstring
    assert get_field_docstring(Control, "undocumented", ()) is None
    assert get_field_docstring(Control, "documented", ()) == "has help"
    for cls in (TrainConfig, EvalConfig, AlgoConfig, SamplingConfig, ModelConfig, TaskConfig):
        for f in dataclasses.fields(cls):
            assert get_field_docstring(cls, f.name, ()), f"{cls.__name__}.{f.name} has no help text"
