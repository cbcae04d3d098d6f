"""User datasets: JSONL / JSON / parquet / saved HF datasets, field mapping, splits, bad rows."""

from __future__ import annotations

import json

import pytest

from anypo.tasks import DataError, get_task


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _rows(n):
    return [{"question": f"What is {i} + 1?", "solution": i + 1, "sys": "Be brief.", "level": i % 3} for i in range(n)]


def test_jsonl_with_field_mapping(tmp_path):
    path = _write_jsonl(tmp_path / "data.jsonl", _rows(20))
    task = get_task(str(path), prompt_field="question", answer_field="solution", system_field="sys", num_heldout=5)
    train, heldout = task.train_examples(), task.heldout_examples()
    assert len(train) == 15 and len(heldout) == 5
    assert not {e.prompt for e in train} & {e.prompt for e in heldout}
    ex = next(e for e in train + heldout if e.prompt == "What is 3 + 1?")
    assert ex.answer == "4" and ex.system == "Be brief."  # a numeric answer becomes text
    assert ex.meta["level"] == 0 and ex.meta["row"] == 4 and ex.meta["source"] == str(path)
    assert [e.meta["row"] for e in train] == sorted(e.meta["row"] for e in train)  # file order
    again = get_task("file", path=str(path), prompt_field="question", answer_field="solution", num_heldout=5)
    assert [e.prompt for e in again.heldout_examples()] == [e.prompt for e in heldout]  # deterministic
    assert task.train_examples(3) == train[:3]
    assert task.reward()(ex.to_sample("Answer: 4")).score == 1.0


def test_instruction_is_appended_only_when_set(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Q?", "answer": "a"}, {"prompt": "R?", "answer": "b"}])
    assert get_task(str(path), num_heldout=0).train_examples()[0].prompt == "Q?"
    task = get_task(str(path), num_heldout=0, instruction="Answer briefly.", system="S")
    assert task.train_examples()[0].prompt == "Q?\nAnswer briefly."
    assert task.train_examples()[0].system == "S"


def test_duplicate_prompts_of_heldout_are_removed_from_train(tmp_path):
    rows = [{"prompt": "same", "answer": "1"}] * 5 + [{"prompt": f"p{i}", "answer": "2"} for i in range(5)]
    path = str(_write_jsonl(tmp_path / "d.jsonl", rows))
    for heldout_seed in range(5):
        task = get_task(path, num_heldout=3, heldout_seed=heldout_seed)
        heldout = [e.canonical_key for e in task.heldout_examples()]
        train = [e.canonical_key for e in task.train_examples()]
        assert len(heldout) == len(set(heldout)) == 3
        assert not set(train) & set(heldout)
        assert len(train) == 10 - (5 if "same" in heldout else 0) - (3 - ("same" in heldout))
    with pytest.raises(ValueError, match="no training rows"):
        get_task(path, num_heldout=6)  # only 6 distinct prompts


def test_separate_heldout_file(tmp_path):
    train_path = _write_jsonl(tmp_path / "train.jsonl", [{"prompt": f"p{i}", "answer": str(i)} for i in range(6)])
    held_path = _write_jsonl(tmp_path / "test.jsonl", [{"prompt": "p0", "answer": "0"}, {"prompt": "z", "answer": "9"}])
    task = get_task(str(train_path), heldout_path=str(held_path))
    assert [e.prompt for e in task.heldout_examples()] == ["p0", "z"]
    assert [e.prompt for e in task.train_examples()] == ["p1", "p2", "p3", "p4", "p5"]


def test_parquet_with_chat_prompts_and_nested_answer(tmp_path):
    """verl-style rows: prompt as chat messages, answer under reward_model.ground_truth."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {
            "prompt": [{"role": "system", "content": "Think."}, {"role": "user", "content": f"{i} * 2?"}],
            "reward_model": {"ground_truth": str(2 * i)},
        }
        for i in range(8)
    ]
    path = tmp_path / "data.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    task = get_task(str(path), answer_field="reward_model.ground_truth", num_heldout=2)
    examples = task.train_examples() + task.heldout_examples()
    assert sorted((e.prompt, e.answer, e.system) for e in examples) == sorted(
        (f"{i} * 2?", str(2 * i), "Think.") for i in range(8)
    )


def test_parquet_flat_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "flat.parquet"
    pq.write_table(pa.table({"q": ["a?", "b?", "c?"], "a": ["1", "2", "3"]}), path)
    task = get_task("file", path=str(path), prompt_field="q", answer_field="a", num_heldout=1)
    assert len(task.train_examples()) == 2 and len(task.heldout_examples()) == 1


def test_saved_hf_dataset_dict_with_heldout_split(tmp_path):
    import datasets

    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list([{"prompt": f"t{i}", "answer": str(i)} for i in range(4)]),
            "test": datasets.Dataset.from_list([{"prompt": "h0", "answer": "0"}]),
        }
    )
    dd.save_to_disk(str(tmp_path / "ds"))
    task = get_task(str(tmp_path / "ds"), heldout_split="test")
    assert [e.prompt for e in task.train_examples()] == ["t0", "t1", "t2", "t3"]
    assert [e.prompt for e in task.heldout_examples()] == ["h0"]
    with pytest.raises(KeyError, match="validation"):
        get_task(str(tmp_path / "ds"), split="validation")


GOOD = {"prompt": "Q?", "answer": "1"}


@pytest.mark.parametrize(
    ("bad_line", "field", "problem"),
    [
        ('{"prompt": "Q?", "answer": ', None, "invalid JSON"),
        (json.dumps({"answer": "1"}), "prompt", "missing"),
        (json.dumps({"prompt": "Q?"}), "answer", "missing"),
        (json.dumps({"prompt": 5, "answer": "1"}), "prompt", "expected a string"),
        (json.dumps({"prompt": "Q?", "answer": [1, 2]}), "answer", "expected a string or number"),
        (json.dumps({"prompt": "Q?", "answer": True}), "answer", "expected a string or number"),
        (json.dumps({"prompt": "  ", "answer": "1"}), "prompt", "empty"),
        (json.dumps(["Q?", "1"]), None, "expected an object"),
    ],
)
def test_malformed_jsonl_row_names_file_row_and_field(tmp_path, bad_line, field, problem):
    path = tmp_path / "broken.jsonl"
    _write_jsonl(path, [GOOD, GOOD, "", bad_line, GOOD])  # the bad row is on line 4 (line 3 is blank)
    with pytest.raises(DataError) as info:
        get_task(str(path), num_heldout=1)
    message = str(info.value)
    assert "broken.jsonl" in message and "row 4" in message and problem in message
    assert info.value.row == 4 and info.value.field == field
    if field is not None:
        assert repr(field) in message


def test_malformed_system_and_mapped_fields(tmp_path):
    path = _write_jsonl(tmp_path / "sys.jsonl", [{"q": "a", "s": None, "a": "1"}, {"q": "b", "a": "2"}])
    with pytest.raises(DataError, match=r"sys.jsonl, row 2: field 's': missing"):
        get_task(str(path), prompt_field="q", answer_field="a", system_field="s", num_heldout=0)
    with pytest.raises(DataError, match=r"row 1: field 'question': missing \(fields: q, s, a\)"):
        get_task(str(path), prompt_field="question", answer_field="a", num_heldout=0)


def test_malformed_parquet_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"prompt": ["a", None, "c"], "answer": ["1", "2", "3"]}), path)
    with pytest.raises(DataError, match=r"bad.parquet, row 2: field 'prompt': expected a string"):
        get_task(str(path), num_heldout=0)


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        get_task(str(tmp_path / "nope.jsonl"))
    (tmp_path / "data.csv").write_text("prompt,answer\n")
    with pytest.raises(ValueError, match="unsupported format"):
        get_task("file", path=str(tmp_path / "data.csv"))
    with pytest.raises(ValueError, match="needs config.path"):
        get_task("file")
