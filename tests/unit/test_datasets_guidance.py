"""User datasets with ``solution`` and ``hints`` fields: mapping, formats, malformed rows."""

from __future__ import annotations

import json

import pytest

from anypo.tasks import DataError, get_task


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


LADDER = ["Add the ones first.", "3 + 4 = 7 in the ones."]


def test_jsonl_solution_and_hints_by_default_names(tmp_path):
    """Rows with ``solution`` / ``hints`` fill Example.solution / Example.hints (a tuple, order
    kept); rows without them (or with null) get None / (); the fields leave meta, others stay."""
    rows = [
        {"prompt": "What is 13 + 4?", "answer": "17", "solution": "3 + 4 = 7, so 17.", "hints": LADDER, "level": 2},
        {"prompt": "What is 2 + 2?", "answer": 4, "solution": None, "hints": None},
        {"prompt": "What is 5 + 1?", "answer": "6", "solution": 6},
        {"prompt": "What is 9 + 9?", "answer": "18", "hints": []},
    ]
    task = get_task(str(_write_jsonl(tmp_path / "d.jsonl", rows)), num_heldout=0)
    a, b, c, d = task.train_examples()
    assert a.solution == "3 + 4 = 7, so 17." and a.hints == tuple(LADDER)
    assert a.meta == {"level": 2, "source": str(tmp_path / "d.jsonl"), "row": 1}
    assert (b.solution, b.hints) == (None, ())
    assert (c.solution, c.hints) == ("6", ())  # a number becomes text, like answers
    assert (d.solution, d.hints) == (None, ())
    assert a.prompt == "What is 13 + 4?"  # never inserted into the prompt


def test_mapped_and_nested_fields_and_disabled(tmp_path):
    rows = [{"q": "Q1?", "a": "1", "worked": "W1", "guide": {"ladder": ["h1", "h2"]}, "solution": "not this"}]
    path = str(_write_jsonl(tmp_path / "m.jsonl", rows))
    ex = get_task(
        path, prompt_field="q", answer_field="a", solution_field="worked", hints_field="guide.ladder", num_heldout=0
    )
    ex = ex.train_examples()[0]
    assert ex.solution == "W1" and ex.hints == ("h1", "h2")
    assert ex.meta["solution"] == "not this" and "worked" not in ex.meta and "guide" not in ex.meta
    off = get_task(path, prompt_field="q", answer_field="a", solution_field=None, hints_field=None, num_heldout=0)
    ex = off.train_examples()[0]
    assert (ex.solution, ex.hints) == (None, ()) and ex.meta["solution"] == "not this"


def test_answer_field_named_solution_is_not_also_the_solution(tmp_path):
    """``answer_field="solution"`` (the docs' example) keeps ``solution`` as the answer only."""
    rows = [{"question": f"What is {i} + 1?", "solution": i + 1} for i in range(4)]
    task = get_task(
        str(_write_jsonl(tmp_path / "s.jsonl", rows)), prompt_field="question", answer_field="solution", num_heldout=1
    )
    for ex in task.train_examples() + task.heldout_examples():
        assert ex.solution is None and ex.answer == str(int(ex.prompt.split()[2]) + 1)


def test_renamed_field_found_in_no_row_is_an_error(tmp_path):
    path = str(_write_jsonl(tmp_path / "t.jsonl", [{"prompt": "Q?", "answer": "1"}]))
    with pytest.raises(ValueError, match="no row has solution_field 'soluton'"):
        get_task(path, solution_field="soluton", num_heldout=0)
    with pytest.raises(ValueError, match="no row has hints_field 'hint'"):
        get_task(path, hints_field="hint", num_heldout=0)


GOOD = json.dumps({"prompt": "Q?", "answer": "1"})


@pytest.mark.parametrize(
    ("row", "field", "problem"),
    [
        ({"hints": "one hint"}, "hints", "got a single string (wrap it in a list)"),
        ({"hints": {"a": 1}}, "hints", "expected a list of strings (weakest hint first), got dict"),
        ({"hints": ["ok", 3]}, "hints", "hint 2 is not a string (got int)"),
        ({"hints": ["ok", " "]}, "hints", "hint 2 is empty"),
        ({"solution": ["a", "b"]}, "solution", "expected a string (a worked solution) or null, got list"),
        ({"solution": True}, "solution", "got bool"),
        ({"solution": ""}, "solution", "empty solution"),
    ],
)
def test_malformed_solution_and_hints_name_file_row_and_field(tmp_path, row, field, problem):
    path = tmp_path / "bad.jsonl"
    _write_jsonl(path, [GOOD, json.dumps({"prompt": "R?", "answer": "2", **row})])
    with pytest.raises(DataError) as info:
        get_task(str(path), num_heldout=0)
    assert info.value.row == 2 and info.value.field == field
    assert str(info.value).startswith(f"{path}, row 2: field {field!r}: ") and problem in str(info.value)


def test_parquet_and_saved_hf_dataset_with_hint_lists(tmp_path):
    """List columns of parquet files and of saved HF datasets come back as tuples of strings."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "prompt": ["A?", "B?"],
            "answer": ["1", "2"],
            "solution": ["sol A", None],
            "hints": [["a1", "a2", "a3"], None],
        }
    )
    pq.write_table(table, tmp_path / "d.parquet")
    a, b = get_task(str(tmp_path / "d.parquet"), num_heldout=0).train_examples()
    assert (a.solution, a.hints, b.solution, b.hints) == ("sol A", ("a1", "a2", "a3"), None, ())

    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"prompt": ["A?", "B?"], "answer": ["1", "2"], "hints": [["x"], ["y", "z"]]})
    ds.save_to_disk(str(tmp_path / "hf"))
    a, b = get_task(str(tmp_path / "hf"), num_heldout=0).train_examples()
    assert (a.hints, b.hints) == (("x",), ("y", "z"))
