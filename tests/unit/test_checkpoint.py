import pytest
import torch

from anypo import checkpoint


def _save(tmp_path, step, value):
    return checkpoint.save(tmp_path, step, {"policy": {"w": torch.full((3,), float(value))}}, {"step": step}, keep=2)


def test_roundtrip_and_latest(tmp_path):
    _save(tmp_path, 1, 1.0)
    _save(tmp_path, 2, 2.0)
    ck = checkpoint.latest(tmp_path)
    assert ck.name == "step_000002"
    tensors, state = checkpoint.load(ck)
    assert state["step"] == 2 and torch.equal(tensors["policy"]["w"], torch.full((3,), 2.0))


def test_keeps_only_newest(tmp_path):
    for s in range(1, 5):
        _save(tmp_path, s, s)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == ["step_000003", "step_000004"]


def test_corrupted_file_is_named(tmp_path):
    ck = _save(tmp_path, 1, 1.0)
    data = bytearray((ck / "policy.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (ck / "policy.safetensors").write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError, match="policy.safetensors is corrupted"):
        checkpoint.load(ck)


def test_incomplete_checkpoint_is_rejected(tmp_path):
    ck = _save(tmp_path, 1, 1.0)
    (ck / "manifest.json").unlink()
    with pytest.raises(checkpoint.CheckpointError, match="incomplete"):
        checkpoint.load(ck)


def test_interrupted_write_leaves_previous_valid(tmp_path, monkeypatch):
    """A crash while writing step 2 (here: torch.save raising) leaves `latest` at step 1, loadable; the
    error comes back as one CheckpointError that keeps the cause."""
    _save(tmp_path, 1, 1.0)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", boom)
    with pytest.raises(checkpoint.CheckpointError, match="disk full") as err:
        _save(tmp_path, 2, 2.0)
    assert isinstance(err.value.__cause__, OSError)
    ck = checkpoint.latest(tmp_path)
    assert ck.name == "step_000001"
    assert checkpoint.load(ck)[1]["step"] == 1


def test_tied_weights_saved_once(tiny_model):
    sd = checkpoint.trainable_state(tiny_model)
    assert ("lm_head.weight" in sd) != ("model.embed_tokens.weight" in sd)


def test_jsonl_logs_ignore_a_line_cut_by_a_kill(tmp_path):
    """A writer killed mid-line leaves `{"step": 3, "rew` after two whole lines: reading gives the two
    whole records, and truncating at step 1 keeps step 1 and drops both the later line and the cut one."""
    from anypo.runs import read_jsonl, truncate_jsonl

    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1, "reward": 0.5}\n{"step": 2, "reward": 0.25}\n{"step": 3, "rew')
    assert read_jsonl(log) == [{"step": 1, "reward": 0.5}, {"step": 2, "reward": 0.25}]
    truncate_jsonl(log, 1)
    assert log.read_text() == '{"step": 1, "reward": 0.5}\n'


def test_optimizer_state_by_name_round_trips_and_names_what_is_missing():
    """AdamW over a 2-layer module after one step keys its state 0..3 (weight, bias of each layer, in
    ``parameters()`` order). By name, the keys are the parameters' names in that order, each group's
    params list becomes the names, and back by index gives the original dict (exp_avg tensors equal).
    A name the model does not train is refused with a message naming it."""
    import pytest
    import torch

    from anypo.checkpoint import CheckpointError, optimizer_state_by_index, optimizer_state_by_name

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    names = [n for n, _ in model.named_parameters()]
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias"]
    sd = opt.state_dict()
    by_name = optimizer_state_by_name(sd, names)
    assert list(by_name["state"]) == names
    assert by_name["param_groups"][0]["params"] == names
    back = optimizer_state_by_index(by_name, names)
    assert list(back["state"]) == [0, 1, 2, 3] and back["param_groups"][0]["params"] == [0, 1, 2, 3]
    for i in range(4):
        assert torch.equal(back["state"][i]["exp_avg"], sd["state"][i]["exp_avg"])
    assert optimizer_state_by_index(sd, names) is sd  # already by index
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fresh.load_state_dict(back)
    assert torch.equal(fresh.state_dict()["state"][3]["exp_avg_sq"], sd["state"][3]["exp_avg_sq"])
    with pytest.raises(CheckpointError, match="2.weight"):
        optimizer_state_by_index(optimizer_state_by_name(sd, ["0.weight", "0.bias", "2.weight", "1.bias"]), names)


def test_a_failed_write_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch):
    """A disk that fills while step 2 is written (the safetensors writer raises ENOSPC): save raises one
    CheckpointError naming the step, the error and the previous checkpoint, removes the partial directory,
    and `latest` still points at step 1, which loads."""
    _save(tmp_path, 1, 1.0)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    with pytest.raises(checkpoint.CheckpointError) as err:
        _save(tmp_path, 2, 2.0)
    msg = str(err.value)
    assert "step 2" in msg and "No space left on device" in msg and "step_000001 is intact" in msg
    assert "GB free" in msg and "\n" not in msg
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    ck = checkpoint.latest(tmp_path)
    assert ck.name == "step_000001"
    assert torch.equal(checkpoint.load(ck)[0]["policy"]["w"], torch.full((3,), 1.0))
