"""Preference data: the two user forms (plain strings, chat messages with an explicit or implicit
prompt), field mapping, held-out carving, malformed rows, and the built-in procedural pairs."""

from __future__ import annotations

import json

import pytest

from anypo.tasks import DataError
from anypo.tasks.preference_data import (
    PreferenceDataConfig,
    builtin_pairs,
    load_preference_data,
)


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _user(text):
    return [{"role": "user", "content": text}]


def _assistant(text):
    return [{"role": "assistant", "content": text}]


def test_plain_strings_with_field_mapping_and_system(tmp_path):
    """Plain form under other field names (dots reach nested fields); a per-row system message."""
    rows = [
        {"q": f"What is {i} + 1?", "ans": {"good": str(i + 1), "bad": str(i + 2)}, "sys": "Be brief.", "id": i}
        for i in range(10)
    ]
    path = _write_jsonl(tmp_path / "pairs.jsonl", rows)
    cfg = PreferenceDataConfig(
        name=str(path), prompt_field="q", chosen_field="ans.good", rejected_field="ans.bad", system_field="sys",
        num_heldout=3,
    )  # fmt: skip
    data = load_preference_data(cfg)
    assert len(data.train) == 7 and len(data.heldout) == 3 and data.task is None
    assert not {p.key for p in data.train} & {p.key for p in data.heldout}
    pair = next(p for p in data.train + data.heldout if p.meta["id"] == 4)
    assert pair.messages() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 4 + 1?"},
    ]
    assert (pair.chosen, pair.rejected) == ("5", "6")
    assert pair.meta["row"] == 5 and pair.meta["source"] == str(path)  # 1-based line number
    assert [p.meta["row"] for p in data.train] == sorted(p.meta["row"] for p in data.train)  # file order
    again = load_preference_data(cfg)
    assert [p.key for p in again.heldout] == [p.key for p in data.heldout]  # the carve-out is deterministic
    assert len(load_preference_data(PreferenceDataConfig(**{**cfg.__dict__, "num_train": 2})).train) == 2


def test_chat_messages_with_explicit_prompt_parquet(tmp_path):
    """TRL's conversational form: prompt messages (system + user), one assistant message per response."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {
            "prompt": [{"role": "system", "content": "Think."}, {"role": "user", "content": f"{i} * 2?"}],
            "chosen": _assistant(str(2 * i)),
            "rejected": _assistant(str(2 * i + 1)),
        }
        for i in range(6)
    ]
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    data = load_preference_data(PreferenceDataConfig(name="file", path=str(path), num_heldout=2))
    pairs = sorted(data.train + data.heldout, key=lambda p: p.meta["row"])
    assert [(p.messages(), p.chosen, p.rejected) for p in pairs] == [
        (
            [{"role": "system", "content": "Think."}, {"role": "user", "content": f"{i} * 2?"}],
            str(2 * i),
            str(2 * i + 1),
        )
        for i in range(6)
    ]


def test_implicit_prompt_in_a_saved_hf_dataset(tmp_path):
    """No prompt field: chosen and rejected are whole conversations; the shared leading messages
    (here a two-turn history) are the prompt, the last assistant messages the responses."""
    import datasets

    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]
    rows = [
        {
            "chosen": [*history, *_user(f"Add {i} and 1."), *_assistant(f"{i + 1}")],
            "rejected": [*history, *_user(f"Add {i} and 1."), *_assistant(f"{i + 3}")],
        }
        for i in range(4)
    ]
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:1])})
    dd.save_to_disk(str(tmp_path / "ds"))
    data = load_preference_data(PreferenceDataConfig(name=str(tmp_path / "ds"), heldout_split="test"))
    assert len(data.heldout) == 1 and len(data.train) == 3  # the held-out prompt is removed from training
    p = data.heldout[0]
    assert p.messages() == [*history, *_user("Add 0 and 1.")]
    assert (p.chosen, p.rejected) == ("1", "3")


def test_separate_heldout_file(tmp_path):
    train = _write_jsonl(
        tmp_path / "train.jsonl", [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(5)]
    )
    held = _write_jsonl(tmp_path / "held.jsonl", [{"prompt": "p0", "chosen": "a", "rejected": "b"}])
    data = load_preference_data(PreferenceDataConfig(name=str(train), heldout_path=str(held)))
    assert [p.messages()[0]["content"] for p in data.train] == ["p1", "p2", "p3", "p4"]


def test_default_system_applies_only_without_one(tmp_path):
    rows = [
        {"prompt": "q1", "chosen": "a", "rejected": "b"},
        {"prompt": [{"role": "system", "content": "Own."}, *_user("q2")], "chosen": "a", "rejected": "b"},
    ]
    path = _write_jsonl(tmp_path / "d.jsonl", rows)
    data = load_preference_data(PreferenceDataConfig(name=str(path), num_heldout=0, system="Default."))
    assert [p.messages()[0]["content"] for p in data.train] == ["Default.", "Own."]


GOOD = {"prompt": "Q?", "chosen": "yes", "rejected": "no"}


@pytest.mark.parametrize(
    ("bad", "field", "problem"),
    [
        ('{"prompt": "Q?", "chosen": ', None, "invalid JSON"),
        (["Q?", "yes", "no"], None, "expected an object"),
        ({"prompt": "Q?", "rejected": "no"}, "chosen", "missing (fields: prompt, rejected)"),
        ({"prompt": "Q?", "chosen": "yes"}, "rejected", "missing"),
        ({"chosen": "yes", "rejected": "no"}, "prompt", "must be chat conversations"),
        ({"prompt": 5, "chosen": "yes", "rejected": "no"}, "prompt", "expected a string or chat messages"),
        ({"prompt": "  ", "chosen": "yes", "rejected": "no"}, "prompt", "empty prompt"),
        ({"prompt": [*_user("Q?"), *_assistant("x")], "chosen": "y", "rejected": "n"}, "prompt", "end with a user"),
        ({"prompt": [{"role": "robot", "content": "Q?"}], "chosen": "y", "rejected": "n"}, "prompt", "role 'robot'"),
        ({"prompt": [{"role": "user"}], "chosen": "y", "rejected": "n"}, "prompt", "no string 'content'"),
        ({"prompt": "Q?", "chosen": "", "rejected": "no"}, "chosen", "empty response"),
        ({"prompt": "Q?", "chosen": 3, "rejected": "no"}, "chosen", "expected a string or one assistant message"),
        ({"prompt": "Q?", "chosen": "yes", "rejected": _user("no")}, "rejected", "exactly one assistant message"),
        (
            {"prompt": "Q?", "chosen": [*_assistant("a"), *_assistant("b")], "rejected": "no"},
            "chosen",
            "exactly one assistant message",
        ),
        (
            {"chosen": [*_user("A?"), *_assistant("a")], "rejected": [*_user("B?"), *_assistant("b")]},
            "rejected",
            "differs from 'chosen'",
        ),
        (
            {"chosen": [*_user("A?"), *_assistant("a")], "rejected": [*_user("A?"), *_user("b")]},
            "rejected",
            "must end with the assistant's reply",
        ),
        ({"chosen": _assistant("a"), "rejected": _assistant("b")}, "chosen", "must end with a user message"),
    ],
)
def test_malformed_row_names_file_row_and_field(tmp_path, bad, field, problem):
    """Each malformed row raises a DataError naming the file, the 1-based line and the field."""
    path = tmp_path / "broken.jsonl"
    _write_jsonl(path, [GOOD, GOOD, "", bad if isinstance(bad, str) else json.dumps(bad), GOOD])  # line 4
    with pytest.raises(DataError) as info:
        load_preference_data(PreferenceDataConfig(name=str(path), num_heldout=1))
    message = str(info.value)
    assert "broken.jsonl" in message and "row 4" in message and problem in message, message
    assert info.value.row == 4 and info.value.field == field
    if field is not None:
        assert repr(field) in message


def test_system_field_errors(tmp_path):
    path = _write_jsonl(tmp_path / "s.jsonl", [{**GOOD, "sys": "S"}, GOOD])
    with pytest.raises(DataError, match=r"s.jsonl, row 2: field 'sys': missing \(use null"):
        load_preference_data(PreferenceDataConfig(name=str(path), system_field="sys", num_heldout=0))
    path = _write_jsonl(tmp_path / "t.jsonl", [{**GOOD, "sys": 3}])
    with pytest.raises(DataError, match="field 'sys': expected a string or null, got int"):
        load_preference_data(PreferenceDataConfig(name=str(path), system_field="sys", num_heldout=0))


def test_bad_names_and_sizes(tmp_path):
    with pytest.raises(KeyError, match="unknown preference data 'nope'"):
        load_preference_data(PreferenceDataConfig(name="nope"))
    with pytest.raises(ValueError, match="needs --data.path"):
        load_preference_data(PreferenceDataConfig(name="file"))
    with pytest.raises(FileNotFoundError):
        load_preference_data(PreferenceDataConfig(name=str(tmp_path / "missing.jsonl")))
    path = _write_jsonl(tmp_path / "two.jsonl", [GOOD, {**GOOD, "prompt": "R?"}])
    with pytest.raises(ValueError, match="no training pairs left"):
        load_preference_data(PreferenceDataConfig(name=str(path), num_heldout=2))


def test_builtin_addition_pairs_are_correct_wrong_and_deterministic():
    """Chosen: 'a + b = s.' then 'Answer: s' with s = a + b (checked by Python arithmetic here);
    rejected: the same text with a different non-negative result; the same seed gives the same
    pairs; held-out problems never appear in training."""
    cfg = PreferenceDataConfig(name="addition", num_train=200, num_heldout=20, seed=3)
    data = builtin_pairs(cfg)
    assert len(data.train) == 200 and len(data.heldout) == 20 and data.task is not None
    for p in data.train + data.heldout:
        a, b = p.meta["operands"]
        assert p.chosen == f"{a} + {b} = {a + b}.\nAnswer: {a + b}"
        head, wrong = p.rejected.split("\nAnswer: ")
        assert head == f"{a} + {b} = {wrong}." and int(wrong) != a + b and int(wrong) >= 0
        assert p.messages()[-1]["content"].startswith(f"What is {a} + {b}?")
    assert not {p.key for p in data.train} & {p.key for p in data.heldout}
    assert [e.canonical_key for e in data.heldout_examples] == [p.key for p in data.heldout]
    again = builtin_pairs(cfg)
    assert [(p.chosen, p.rejected) for p in again.train] == [(p.chosen, p.rejected) for p in data.train]
    other = builtin_pairs(PreferenceDataConfig(name="addition", num_train=200, num_heldout=20, seed=4))
    assert [p.key for p in other.train] != [p.key for p in data.train]
    # the wrong results are spread over unit slips (1-9), ten slips (10, 20, 30) and carry slips (1 or 11)
    deltas = {abs(int(p.rejected.rsplit(" ", 1)[1]) - int(p.chosen.rsplit(" ", 1)[1])) for p in data.train}
    assert deltas <= set(range(1, 10)) | {10, 11, 20, 30}
    assert deltas & set(range(2, 10)) and deltas & {10, 20, 30}


def test_builtin_multiplication_pairs():
    data = load_preference_data(PreferenceDataConfig(name="multiplication", num_train=10, num_heldout=2))
    for p in data.train:
        a, b = p.meta["operands"]
        assert p.chosen == f"{a} * {b} = {a * b}.\nAnswer: {a * b}" and p.rejected != p.chosen
