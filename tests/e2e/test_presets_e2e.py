"""Every preset trains the tiny model for 2 steps in the loop of its kind: parameters change, metrics are
finite, checkpoints load."""

import dataclasses
import json
import math
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from anypo import checkpoint, cli
from anypo.algorithms import PRESETS
from anypo.config import from_jsonable
from anypo.models import load_model
from anypo.train import train

TOY = str(Path(__file__).with_name("toy_rewards.py"))
SMOKE_EXTRA = {
    "passk": ["--algo.advantage.k", "2"],
    # SDPO distils only rows with a successful sibling (reward >= 1 by default); the toy reward on the
    # random tiny model never reaches 1, so every sample counts as a success here
    "sdpo": ["--algo.rollout.success-threshold", "0"],
    # T-PPO carries the responses its window cuts (all of them on the random tiny model, which never
    # ends one in 8 tokens) and trains them only once a reward or a learned value arrives: one carry
    # makes step 2's continuations final (cut at the cap, scored), so step 2 trains
    "tppo": ["--algo.rollout.max-carries", "1"],
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_smoke_trains_tiny_model(preset, tmp_path):
    """`anypo train <preset> --smoke` (what CI runs for every preset): 2 steps, parameters change,
    metrics finite, checkpoints load. Online presets get the toy reward, so that groups have a reward
    spread; preference presets train on the built-in addition pairs (no reward)."""
    kind = PRESETS[preset].kind
    extra = ["--rewards", f"{TOY}:char_sum"] if kind == "online" else []
    # pass@k with k = G is degenerate (every advantage 0: a group of 4 with k = 4 has pass@4 in {0, 1}
    # for all its subsets alike); the smoke's 4 samples per prompt need k < 4 for anything to train
    extra += SMOKE_EXTRA.get(preset, [])
    rc = cli.main(["train", preset, "--smoke", *extra, "--out-dir", str(tmp_path)])
    assert rc == 0
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    cfg = from_jsonable(json.loads((run / "config.json").read_text()))
    assert (cfg.model.name, cfg.steps, cfg.eval_every) == ("tiny", 2, 0)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        bad = {k: v for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)}
        assert not bad, f"non-finite metrics: {bad}"
        assert r["train/skipped_updates"] == 0
    # parameters changed: the exported final policy differs from the seeded initial tiny model
    init = load_model("tiny", seed=cfg.seed).state_dict()
    final = load_file(str(run / "final" / "model.safetensors"))
    changed = [k for k, v in final.items() if k in init and not torch.equal(v, init[k])]
    assert changed, "no parameter changed"
    tensors, state = checkpoint.load(checkpoint.latest(run))
    assert state["step"] == 2 and "policy" in tensors
    plot = {"online": "reward.png", "reward_model": "preference.png"}.get(kind, "preference.png")
    assert (run / "README.md").exists() and (run / plot).exists()


def test_list_json_has_every_preset_with_its_docs_page(capsys):
    """`anypo list --json`: name, title, arXiv, status, kind and an existing docs page per preset.
    The arXiv field is an id, or "" for a source not on arXiv (cdpo: a note), whose URL is then in
    the preset's docstring, never a placeholder."""
    assert cli.main(["list", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert sorted(r["name"] for r in records) == sorted(PRESETS)
    root = Path(__file__).parents[2]
    for r in records:
        assert r["status"] in ("verified", "reconstructed") and r["kind"] == PRESETS[r["name"]].kind
        assert r["kind"] in ("online", "preference", "preference_online", "reward_model")
        assert r["arxiv"] == PRESETS[r["name"]].arxiv and r["title"]
        doc = PRESETS[r["name"]].build.__doc__ or ""
        assert re.fullmatch(r"\d{4}\.\d{4,5}", r["arxiv"]) or (r["arxiv"] == "" and "https://" in doc), r["name"]
        assert (root / r["docs"]).exists(), r["docs"]


def test_dynamic_sampling_keeps_only_mixed_groups(make_cfg):
    """DAPO's sampler: with a constant reward every group is all-equal, so nothing is kept and the
    loop draws up to max_draws times, recording the draws."""
    algo = PRESETS["dapo"].build()
    algo = dataclasses.replace(algo, sampler=dataclasses.replace(algo.sampler, max_draws=3))
    cfg = make_cfg(algo=algo, steps=1, rewards=("format",))
    run = train(cfg)
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert row["rollout/draws"] == 3.0
    assert row["rollout/all_equal_group_frac"] == 1.0
