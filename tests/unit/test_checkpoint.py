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
    """A crash while writing step 2 (here: torch.save raising) leaves `latest` at step 1, loadable."""
    _save(tmp_path, 1, 1.0)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", boom)
    with pytest.raises(OSError):
        _save(tmp_path, 2, 2.0)
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
