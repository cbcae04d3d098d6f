"""Reward-model training: a causal LM with a scalar head, fit to preference pairs with the Bradley-Terry loss.

``anypo train reward_model`` reads preference pairs exactly as the offline preference loop does
(built-in addition pairs, or JSONL / parquet / HF datasets in TRL's preference format) and minimises

    L = (1/P) sum_i -log sigmoid(r(x_i, y_w,i) - r(x_i, y_l,i))

(InstructGPT, https://arxiv.org/abs/2203.02155, Eq. 1; TRL's ``RewardTrainer``), where ``r(x, y)`` is a
linear head on the backbone's last hidden state at the response's last token (its end-of-turn
token). Held-out pairs give ``eval/accuracy``. The run directory, checkpoints with exact resume,
logs, budgets and the report are the shared scaffold's; the data order and the update (micro-batches
normalised by the step's global pair count, clipping, non-finite skips) are the offline preference
loop's (:class:`anypo.train_pref.PrefLoop`), with the forward and the loss replaced.

The exported ``final/`` directory is the backbone (a standard Hugging Face model directory) plus
``reward_head.safetensors``; ``anypo.oracles.RewardModelOracle`` (``--oracle.kind reward_model
--oracle.reward-model DIR``) loads it as a preference source: a proxy reward for over-optimisation
studies, with the verifier as the gold (``--eval-oracle.kind verifier_bt``).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from anypo import models
from anypo.config import RunOptions
from anypo.errors import UserError
from anypo.metrics import MetricAccumulator
from anypo.models import ModelConfig
from anypo.run import run_loop
from anypo.tasks.preference_data import PreferenceDataConfig
from anypo.train_pref import PrefLoop, TokenPairs, _chunks, _pad

__all__ = ["HEAD_FILE", "RMAlgoConfig", "RMLoop", "RMTrainConfig", "RewardModel", "rm_config_problems", "train"]

log = logging.getLogger(__name__)

HEAD_FILE = "reward_head.safetensors"
"""The scalar head, next to the exported backbone in ``final/``."""


@dataclass(frozen=True)
class RMAlgoConfig:
    """The reward-model objective: Bradley-Terry, optionally with TRL's reward centring term."""

    center_rewards_coef: float = 0.0
    """TRL's center_rewards_coefficient: adds coef * mean((r_w + r_l)^2) to keep rewards near 0; 0: off."""


@dataclass(frozen=True)
class RMTrainConfig(RunOptions):
    """One reward-model training run. ``anypo train reward_model`` fills ``algo`` from the preset."""

    algo: RMAlgoConfig = field(default_factory=RMAlgoConfig)
    """The objective (Bradley-Terry)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The backbone (a causal LM); the scalar head is added on top."""
    data: PreferenceDataConfig = field(default_factory=PreferenceDataConfig)
    """The preference pairs (built-in addition pairs, or a JSONL / parquet / HF dataset)."""
    name: str = "reward_model"
    """Run name; the run directory is <out_dir>/<name>-<timestamp>."""
    steps: int = 30
    """Optimizer steps (one per `pairs_per_step` pairs); training also ends after `epochs` passes."""
    epochs: int = 1
    """Passes over the training pairs (TRL's default: 1)."""
    pairs_per_step: int = 8
    """Preference pairs per optimizer step."""
    lr: float = 1e-5
    """Peak learning rate of the optimizer (AdamW's by default; see ``optimizer``)."""
    max_response_tokens: int = 512
    """Pairs with a longer response are skipped and counted."""
    eval_pairs: int = 32
    """Held-out pairs per evaluation."""
    log_samples: int = 2
    """Pairs written to samples.jsonl per step (with their rewards)."""


def train(cfg: RMTrainConfig, resume: str | Path | None = None) -> Path:
    """Run ``cfg`` (or continue the run in ``resume``) and return the run directory."""
    problems = rm_config_problems(cfg)
    if problems:
        raise UserError(problems)
    return run_loop(cfg, RMLoop.build, resume)


def rm_config_problems(cfg: RMTrainConfig) -> list[str]:
    """Every problem of ``cfg``, one message each naming the option and the fix (empty when valid)."""
    from anypo.train_pref import PAIR_COUNTS, _data_problems, loop_problems
    from anypo.validate import _model_problems

    if not isinstance(cfg.algo, RMAlgoConfig):
        return [
            f"algo is a {type(cfg.algo).__name__}, not the reward-model loop's RMAlgoConfig (anypo.cli.loop_of(kind))"
        ]
    out = loop_problems(cfg, PAIR_COUNTS, lr_example="1e-5")
    if not (math.isfinite(cfg.algo.center_rewards_coef) and cfg.algo.center_rewards_coef >= 0):
        out.append(f"--algo.center-rewards-coef is {cfg.algo.center_rewards_coef}: it must be >= 0 (0: off)")
    out += _data_problems(cfg.data)
    out += _model_problems(cfg.model)
    return out


# ---------------------------------------------------------------------------------------------
# ALGO LOGIC: the model and the loss
# ---------------------------------------------------------------------------------------------


class RewardModel(torch.nn.Module):
    """``r(x, y) = w . h_last``: a causal LM's final hidden state at the sequence's last token, through
    a bias-free linear head (TRL / transformers' sequence-classification ``score`` head).

    Args:
        backbone: a causal LM (its decoder body is used; the LM head is not).
        seed: seed of the head's initialisation, ``N(0, 1/H)``.
    """

    def __init__(self, backbone: torch.nn.Module, seed: int = 0):
        super().__init__()
        self.backbone = backbone
        H = backbone.config.hidden_size
        self.head = torch.nn.Linear(H, 1, bias=False)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            torch.nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(H))

    def body(self) -> torch.nn.Module:
        from anypo.models import is_lora

        base = self.backbone.get_base_model() if is_lora(self.backbone) else self.backbone
        return base.get_decoder()

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """``[n]`` rewards of ``n`` right-padded sequences ``ids [n, L]`` (``mask`` 1 on real tokens)."""
        h = self.body()(input_ids=ids, attention_mask=mask).last_hidden_state  # [n, L, H]
        last = (mask.sum(-1) - 1).clamp(min=0)  # [n]
        h_last = h[torch.arange(ids.shape[0]), last]  # [n, H]
        return self.head(h_last.to(self.head.weight.dtype)).squeeze(-1)


def sequences(tp: TokenPairs, idx: list[int], pad_id: int) -> tuple[Tensor, Tensor]:
    """``[2k, L]`` ids and mask: rows ``0..k-1`` prompt + chosen, ``k..2k-1`` prompt + rejected (right-padded)."""
    rows = [tp.prompt[i] + tp.chosen[i] for i in idx] + [tp.prompt[i] + tp.rejected[i] for i in idx]
    return _pad(rows, pad_id, left=False)


def bt_loss(r_w: Tensor, r_l: Tensor, num_pairs: float, center_coef: float = 0.0) -> Tensor:
    """``sum_i [-log sigmoid(r_w - r_l) + c (r_w + r_l)^2] / P``: the Bradley-Terry loss (plus TRL's
    centring term ``c mean((r_w + r_l)^2)``), normalised by the step's global pair count ``P``."""
    per_pair = -F.logsigmoid(r_w - r_l)
    if center_coef:
        per_pair = per_pair + center_coef * (r_w + r_l) ** 2
    return per_pair.sum() / num_pairs


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


class RMLoop(PrefLoop):
    """A reward-model run: the offline loop's data order and update with the reward model's forward."""

    progress_keys = (("loss", "pref/loss"), ("acc", "pref/accuracy"))

    @classmethod
    def build(cls, cfg: RMTrainConfig, run_dir: Path) -> RMLoop:
        self = cls.start(cfg, run_dir, wrap=lambda lm: RewardModel(lm, seed=cfg.seed))
        self.load_pairs()
        self.make_optimizer()
        return self

    def _rewards(self, tp: TokenPairs, chunk: list[int]) -> tuple[Tensor, Tensor]:
        ids, mask = sequences(tp, chunk, self.pad_id)
        with self.autocast():
            r = self.model(ids, mask).float()
        k = len(chunk)
        return r[:k], r[k:]

    def accumulate(self, tp: TokenPairs, idx: list[int]) -> tuple[dict[str, float], dict[int, dict[str, float]]] | None:
        """Forward and backward of the Bradley-Terry loss of pairs ``idx`` in micro-batches; gradients
        accumulate; every micro-batch divides by the step's pair count (micro-batch invariant)."""
        clock, P = time.perf_counter, float(len(idx))
        all_tokens = float(sum(len(tp.chosen[i]) + len(tp.rejected[i]) for i in idx))
        acc, per_pair = MetricAccumulator(), {}
        times = {"time/forward_s": 0.0, "time/backward_s": 0.0}
        for chunk in _chunks(sorted(idx, key=lambda i: -tp.length(i)), self.cfg.micro_batch_size):
            t = clock()
            r_w, r_l = self._rewards(tp, chunk)
            loss = bt_loss(r_w, r_l, P, self.algo.center_rewards_coef)
            if not torch.isfinite(loss):
                return None
            t, times["time/forward_s"] = clock(), times["time/forward_s"] + clock() - t
            loss.backward()
            times["time/backward_s"] += clock() - t
            self._metrics(acc, loss, r_w.detach(), r_l.detach(), len(chunk) / P, all_tokens, tp, chunk)
            for row, i in enumerate(chunk):
                per_pair[i] = {"reward_chosen": float(r_w[row].detach()), "reward_rejected": float(r_l[row].detach())}
        out = acc.result()
        out.update(times)
        return out, per_pair

    @staticmethod
    def _metrics(acc, loss, r_w, r_l, seq_share, all_tokens, tp, chunk) -> None:
        tok_share = sum(len(tp.chosen[i]) + len(tp.rejected[i]) for i in chunk) / max(all_tokens, 1.0)
        acc.add("pref/loss", float(loss.detach()), "sum", tok_share, seq_share)
        acc.add("loss/total", float(loss.detach()), "sum", tok_share, seq_share)
        for key, v in (
            ("pref/reward_chosen", r_w.mean()),
            ("pref/reward_rejected", r_l.mean()),
            ("pref/reward_margin", (r_w - r_l).mean()),
            ("pref/accuracy", (r_w > r_l).float().mean()),
        ):
            acc.add(key, float(v), "seq_mean", tok_share, seq_share)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The loss and accuracy on the first ``eval_pairs`` held-out pairs (``eval/loss``, ``eval/accuracy``)."""
        tp = self.heldout_pairs
        if tp is None or self.cfg.eval_pairs == 0:
            return {}
        idx = list(range(min(self.cfg.eval_pairs, len(tp))))
        if not idx:
            return {}
        was = self.model.training
        self.model.eval()
        acc = MetricAccumulator()
        try:
            for chunk in _chunks(idx, self.cfg.micro_batch_size):
                r_w, r_l = self._rewards(tp, chunk)
                loss = bt_loss(r_w, r_l, float(len(idx)), self.algo.center_rewards_coef)
                self._metrics(acc, loss, r_w, r_l, len(chunk) / len(idx), 1.0, tp, chunk)
        finally:
            self.model.train(was)
        return {"eval/" + k.split("/", 1)[1]: v for k, v in acc.result().items() if not k.startswith("loss/")}

    def describe(self) -> str:
        cfg = self.cfg
        return (
            f"Bradley-Terry reward model (backbone `{cfg.model.name}` + scalar head) on preference data "
            f"`{cfg.data.path or cfg.data.name}` ({len(self.train_pairs)} training pairs): up to {cfg.steps} steps of "
            f"{cfg.pairs_per_step} pairs (at most {cfg.epochs} epoch(s)), lr {cfg.lr}."
        )

    def export(self, out: Path) -> None:
        """The backbone as a Hugging Face directory plus ``reward_head.safetensors`` (the head's weight)."""
        from safetensors.torch import save_file

        from anypo.trainer_setup import export_final

        export_final(self.model.backbone, self.tokenizer, out)
        save_file({"weight": self.model.head.weight.detach().contiguous()}, str(out / HEAD_FILE))


def load_reward_model(path: str | Path) -> tuple[RewardModel, Any]:
    """A reward model exported by :meth:`RMLoop.export` and its tokenizer (frozen, eval mode)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / HEAD_FILE).exists():
        raise FileNotFoundError(
            f"{path} has no {HEAD_FILE}: give the final/ directory of an `anypo train reward_model` run"
        )
    backbone = models.load_model(ModelConfig(name=str(path)))
    rm = RewardModel(backbone)
    rm.head.weight.data.copy_(load_file(str(path / HEAD_FILE))["weight"])
    return rm.eval().requires_grad_(False), models.load_tokenizer(str(path))
