"""The offline preference loop, top to bottom: pairs -> (cached) reference log-probs -> preference loss -> update.

Each step takes the next ``pairs_per_step`` pairs of a seeded per-epoch shuffle of the training
pairs, computes the policy's log-probabilities of both responses of every pair, applies the
registered ``preference_loss`` of the preset (``dpo``, ``ipo``, ``cdpo``, ``rpo``, ...) and takes one
optimizer step. The run directory, checkpoints and exact resume, logs, budgets, Ctrl-C and the
report are the shared scaffold's (:func:`anypo.run.run_loop`); this file holds only the algorithm.

* **Pairs in one pass.** A micro-batch of k pairs is one packed forward pass: each pair's prompt,
  chosen and rejected responses form one sequence in which each response attends to the prompt and
  to itself only (``anypo.policy.pack_by_prompt``), so the prompt runs once per pair, not once per
  response, and no compute goes to padding inside a sequence.
* **Reference log-probs as a cached column.** A loss that declares ``needs_ref_logprobs`` needs
  ``log pi_ref`` of every response token. The reference of an offline run is the initial policy, so
  these are computed once, with the policy's own weights before the first update, for every pair
  the run will use (and the held-out pairs); no reference model is kept in memory. They are saved
  in the run directory (``reference_logprobs.safetensors``) and read back on ``--resume``, so the
  reference pass runs once per run, not once per epoch or per resume.
* **Micro-batch invariance.** Every micro-batch's loss is normalised by the step's global counts
  (``PreferenceBatch.num_pairs``, ``num_chosen_tokens``), so their sum is the loss of the whole
  step and ``micro_batch_size`` changes memory, never results (tested).
* **Reuse by online methods.** The update (:meth:`PrefLoop.update`) takes any :class:`TokenPairs`
  with optional reference columns; a source of pairs is an object with ``next_pairs(step)`` and
  ``state_dict`` / ``load_state_dict`` (:class:`PairOrder` is the offline one). An online method
  (``online_dpo``: sample two responses per prompt, judge them with an oracle) supplies a source
  that builds fresh :class:`TokenPairs` each step and runs the reference pass on them
  (:func:`pair_logprobs` under ``torch.no_grad`` with the reference weights) instead of reading the cache.
* **Set-up shared with the other preference-shaped loops.** The online loop
  (``anypo.train_pref_online``) and the reward-model loop (``anypo.train_rm``) subclass
  :class:`PrefLoop` and build with its :meth:`PrefLoop.start` (tokenizer, model, autocast),
  :meth:`PrefLoop.load_pairs` (the reward model's data) and :meth:`PrefLoop.make_optimizer`; their
  config checks start from :func:`loop_problems` (and :func:`loss_problems`).

* **Revision-conditioned passes.** A loss that declares ``needs_revision_logprobs`` (SRPO's
  self-improver ``pi(y'|x, y)``, ``anypo.losses.revision``) also gets the log-probs of both responses
  of a pair after each of its two revision prompts ``R(x, y_w)`` and ``R(x, y_l)`` (the loss config's
  ``revision_template``): two more packed passes per micro-batch, the same pairs with another prompt,
  and their reference values cached in the same reference file.

The loop never branches on a method's name: it reads the loss config's ``needs_ref_logprobs`` and
``needs_revision_logprobs``.
"""

from __future__ import annotations

import hashlib
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from anypo import checkpoint, models, registry
from anypo.config import RunOptions
from anypo.engines.base import SamplingConfig
from anypo.errors import UserError
from anypo.losses.preference import DPO
from anypo.losses.revision import SIDES, revision_key, revision_messages
from anypo.metrics import MetricAccumulator
from anypo.models import ModelConfig
from anypo.oracles import OracleConfig
from anypo.policy import response_logprobs
from anypo.run import run_loop
from anypo.runs import peak_rss_gb
from anypo.tasks.base import TaskConfig, stable_seed
from anypo.tasks.preference_data import PreferenceDataConfig, PreferencePair
from anypo.types import PartConfig, PolicyOutput, PreferenceBatch, RolloutBatch

__all__ = [
    "PairOrder",
    "PrefAlgoConfig",
    "PrefLoop",
    "PrefTrainConfig",
    "TokenPairs",
    "add_revision_prompts",
    "check_pref_config",
    "loop_problems",
    "loss_problems",
    "pair_logprobs",
    "pref_config_problems",
    "tokenize_pairs",
    "train",
]

log = logging.getLogger(__name__)

REFERENCE_FILE = "reference_logprobs.safetensors"


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrefAlgoConfig:
    """A preference method: the registered ``preference_loss`` it minimises.

    A preset of kind ``preference`` (``anypo.algorithms``) returns one of these. The loop reads the
    loss config's needs (``needs_ref_logprobs``), never its name.
    """

    loss: PartConfig = field(default_factory=DPO)
    """Config of a registered ``preference_loss`` part (e.g. ``DPO(beta=0.1)``)."""

    def parts(self) -> tuple[PartConfig, ...]:
        return (self.loss,)

    def needs(self, what: str) -> bool:
        """True when a part declares ``needs_<what>`` (``ref_logprobs``, ...)."""
        return any(getattr(p, f"needs_{what}", False) for p in self.parts())


@dataclass(frozen=True)
class PrefTrainConfig(RunOptions):
    """One offline preference-optimisation experiment. ``anypo train <preset>`` fills ``algo`` from a
    preset of kind ``preference`` (dpo, ipo, cdpo, rpo)."""

    algo: PrefAlgoConfig = field(default_factory=PrefAlgoConfig)
    """The method: the preference loss and its hyperparameters (from a preset)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy to train; its initial weights are the reference."""
    data: PreferenceDataConfig = field(default_factory=PreferenceDataConfig)
    """The preference pairs (built-in addition pairs, or a JSONL / parquet / HF dataset)."""
    name: str = "dpo"
    """Run name; the run directory is <out_dir>/<name>-<timestamp>."""
    steps: int = 30
    """Optimizer steps (one per `pairs_per_step` pairs); training also ends after `epochs` passes."""
    epochs: int = 1
    """Passes over the training pairs (each in a fresh seeded order); training ends at whichever of
    `steps` and `epochs` comes first. The last step of the last epoch may have fewer pairs."""
    pairs_per_step: int = 8
    """Preference pairs per optimizer step (TRL: per-device batch x gradient accumulation)."""
    pack_prompts: bool = True
    """A pair's prompt, chosen and rejected responses run as one packed sequence (the prompt once).
    False: one padded row per response (slower; the same function)."""
    max_response_tokens: int = 512
    """Pairs with a longer chosen or rejected response (end-of-turn token included) are skipped and counted."""
    eval_pairs: int = 32
    """Held-out pairs scored per evaluation (eval/loss, eval/accuracy, ...; at most data.num_heldout)."""
    eval_prompts: int = 50
    """Built-in pairs only: held-out prompts sampled for eval/pass@k with the task's checker; 0 = none."""
    eval_samples: int = 1
    """Samples per held-out prompt (pass@k is reported for k = 1 and k = eval_samples)."""
    eval_sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=0.7))
    """Sampling for eval/pass@k."""
    eval_oracle: OracleConfig = field(default_factory=lambda: OracleConfig(kind="none"))
    """A preference oracle that also evaluates the policy on `eval_task`'s held-out prompts, as the online
    loop does (eval/win_rate_vs_init, eval/gold, eval/kl_ref, eval/exploitability); none: no such evaluation.
    E.g. `--eval-oracle.kind verifier_bt` for a run on pairs from `anypo pairs`."""
    eval_proxy: OracleConfig = field(default_factory=lambda: OracleConfig(kind="none"))
    """With `eval_oracle`: a second oracle whose score of the same evaluation samples is logged as eval/proxy
    (e.g. the reward model that labelled the pairs, while the verifier is the gold); none: no such score."""
    eval_task: TaskConfig = field(default_factory=TaskConfig)
    """The task whose held-out prompts the oracle evaluation samples (its reward is verifier_bt's gold)."""
    oracle_eval_prompts: int = 32
    """Held-out prompts per oracle evaluation (at most eval_task.num_heldout)."""
    oracle_eval_sampling: SamplingConfig = field(
        default_factory=lambda: SamplingConfig(temperature=1.0, max_new_tokens=64)
    )
    """Sampling of the oracle evaluation's responses (temperature 1: eval/kl_ref estimates the policy's KL)."""
    eval_candidates: int = 0
    """Samples of the initial policy per held-out prompt in the game of eval/exploitability; 0: none."""


def train(cfg: PrefTrainConfig, resume: str | Path | None = None) -> Path:
    """Run ``cfg`` (or continue the run in ``resume``) and return the run directory.

    The config is checked before anything is loaded (:func:`check_pref_config`).
    """
    check_pref_config(cfg)
    return run_loop(cfg, PrefLoop.build, resume)


# ---------------------------------------------------------------------------------------------
# Config checks (before anything is loaded)
# ---------------------------------------------------------------------------------------------


def check_pref_config(cfg: PrefTrainConfig) -> None:
    """Validate a ``PrefTrainConfig``; raise :class:`~anypo.errors.UserError` listing every problem."""
    problems = pref_config_problems(cfg)
    if problems:
        raise UserError(problems)


def pref_config_problems(cfg: PrefTrainConfig) -> list[str]:
    """Every problem of ``cfg``, one message each naming the option and the fix (empty when valid)."""
    from anypo.validate import _model_problems, _sampling_problems

    out = loop_problems(
        cfg,
        PAIR_COUNTS + (
            ("eval_prompts", 0, "the held-out prompts sampled per evaluation (0 = none)"),
            ("eval_samples", 1, "the samples per held-out prompt"),
            ("oracle_eval_prompts", 0, "the held-out prompts per oracle evaluation"),
            ("eval_candidates", 0, "the candidates per held-out prompt (0 = no exploitability)"),
        ),
    )  # fmt: skip
    out += loss_problems(cfg.algo.loss)
    if cfg.eval_every > 0 and cfg.eval_prompts > 0:
        out += _sampling_problems(cfg.eval_sampling, "eval_sampling")
    from anypo.oracles import oracle_config_problems
    from anypo.train_pref_online import oracle_task_problems

    if cfg.eval_oracle.kind == "same":
        out.append(
            "--eval-oracle.kind is 'same', but the offline loop has no training oracle: name one (e.g. verifier_bt) "
            "or none"
        )
    elif cfg.eval_oracle.kind != "none":
        out += oracle_config_problems(cfg.eval_oracle, "eval-oracle")
        kinds = {cfg.eval_oracle.kind, cfg.eval_proxy.kind}
        out += oracle_task_problems(kinds, cfg.eval_task.name, "--eval-task.name")
        if cfg.eval_every > 0 and cfg.oracle_eval_prompts > 0:
            out += _sampling_problems(cfg.oracle_eval_sampling, "oracle_eval_sampling")
    if cfg.eval_proxy.kind not in ("none", "same"):
        out += oracle_config_problems(cfg.eval_proxy, "eval-proxy")
        if cfg.eval_oracle.kind == "none":
            out.append("--eval-proxy.kind is set but --eval-oracle.kind is none: the proxy is scored on the oracle "
                       "evaluation's samples; name an evaluation oracle (e.g. verifier_bt)")  # fmt: skip
    elif cfg.eval_proxy.kind == "same":
        out.append("--eval-proxy.kind is 'same', but the offline loop has no training oracle: name one or none")
    out += _data_problems(cfg.data)
    out += _model_problems(cfg.model)
    return out


COUNTS = (
    ("steps", 1, "the number of optimizer steps"),
    ("micro_batch_size", 1, "the pairs per forward/backward pass"),
    ("eval_every", 0, "the evaluation interval (0 = never)"),
    ("save_every", 1, "the checkpoint interval"),
    ("keep_checkpoints", 1, "the number of checkpoints kept"),
    ("threads", 1, "the torch CPU threads"),
    ("warmup_steps", 0, "the warm-up steps"),
    ("max_prompt_tokens", 1, "the prompt length limit"),
    ("max_bad_updates", 1, "the non-finite updates tolerated in a row"),
    ("log_samples", 0, "the pairs logged per step"),
    ("budget_tokens", 0, "the token budget (0 = none)"),
)
"""``(option, lowest value, what it is)`` of the whole-number options every preference-shaped loop has."""

PAIR_COUNTS = (
    ("epochs", 1, "the passes over the training pairs"),
    ("pairs_per_step", 1, "the preference pairs per optimizer step"),
    ("eval_pairs", 0, "the held-out pairs per evaluation"),
    ("max_response_tokens", 1, "the response length limit"),
)
"""Those of the loops that read a preference data set (offline preference, reward model)."""


def loop_problems(cfg: Any, counts: tuple = (), lr_example: str = "1e-6") -> list[str]:
    """The checks the preference-shaped loops (offline, online, reward model) share: the learning
    rate, the whole-number options of :data:`COUNTS` and ``counts``, gradient clipping and the run
    scaffold's fields (``anypo.validate.scaffold_problems``)."""
    from anypo.validate import _at_least, scaffold_problems

    out: list[str] = []
    if not cfg.lr > 0:
        out.append(f"--lr is {cfg.lr}: the learning rate must be > 0 (e.g. --lr {lr_example})")
    for path, low, what in (*COUNTS, *counts):
        out += _at_least(cfg, path, low, what)
    if not cfg.max_grad_norm > 0:
        out.append(f"--max-grad-norm is {cfg.max_grad_norm}: it must be > 0 (e.g. --max-grad-norm 1.0; inf for none)")
    out += scaffold_problems(cfg)
    return out


def loss_problems(loss: Any) -> list[str]:
    """A message when ``algo.loss`` is not the config of a registered ``preference_loss``."""
    try:
        registry.registry("preference_loss").name_of(loss)
    except KeyError:
        return [
            f"algo.loss is a {type(loss).__name__}, not a registered preference_loss config: use a preference "
            f"preset or one of {', '.join(registry.names('preference_loss'))}"
        ]
    return []


def _data_problems(data: PreferenceDataConfig) -> list[str]:
    from anypo.tasks.data import looks_like_path
    from anypo.tasks.preference_data import BUILTIN_PAIRS
    from anypo.validate import dataset_file_problems, dataset_split_problems

    out: list[str] = []
    if data.name in BUILTIN_PAIRS:
        if data.digits is not None and data.digits < 1:
            out.append(f"--data.digits is {data.digits}: operands need >= 1 digit (or None for the default, 2)")
    elif data.name == "file" or looks_like_path(data.name):
        out += dataset_file_problems(data, "data")
    else:
        out.append(
            f"--data.name is {data.name!r}: give a built-in set ({', '.join(BUILTIN_PAIRS)}), 'file' with "
            "--data.path, or a dataset path (.jsonl, .json, .parquet or a saved dataset directory)"
        )
    out += dataset_split_problems(data, "data", "all")
    return out


# ---------------------------------------------------------------------------------------------
# Tokenized pairs and the pair forward pass
# ---------------------------------------------------------------------------------------------


@dataclass
class TokenPairs:
    """Tokenized pairs, one entry per pair (Python lists: pairs have different lengths).

    Attributes:
        prompt: chat-templated prompt token ids.
        chosen / rejected: response token ids, the end-of-turn token last.
        ref_chosen / ref_rejected: the cached reference column: per-token reference log-probs of
            each response (1-D float tensors as long as the response), or None where not computed.
        texts: the pairs they were made from (for the samples log).
        extras: per-pair scalars by name (one float per pair), handed to the loss as
            ``PreferenceBatch.extras[name]`` ``[k]`` tensors (the online methods' oracle win rates,
            which side is a reference sample, ...); empty for offline data.
        revision_prompt: ``{given: token ids per pair}`` of the revision prompts ``R(x, y_given)``,
            ``given`` in ``chosen`` / ``rejected`` (:func:`add_revision_prompts`); empty unless the loss
            declares ``needs_revision_logprobs``.
        ref_revision: the revision reference columns, ``{revision_key(target, given, ref=True): per
            pair 1-D tensors}`` as ``ref_chosen`` (filled by the reference pass).
    """

    prompt: list[list[int]]
    chosen: list[list[int]]
    rejected: list[list[int]]
    ref_chosen: list[Tensor | None]
    ref_rejected: list[Tensor | None]
    texts: list[PreferencePair]
    extras: dict[str, list[float]] = field(default_factory=dict)
    revision_prompt: dict[str, list[list[int]]] = field(default_factory=dict)
    ref_revision: dict[str, list[Tensor | None]] = field(default_factory=dict)

    def extras_of(self, idx: list[int], dtype: torch.dtype) -> dict[str, Tensor]:
        """The per-pair extras of pairs ``idx`` as ``[k]`` tensors (``PreferenceBatch.extras``)."""
        return {name: torch.tensor([col[i] for i in idx], dtype=dtype) for name, col in self.extras.items()}

    def __len__(self) -> int:
        return len(self.prompt)

    def length(self, i: int) -> int:
        """Tokens of pair ``i`` in a packed pass (prompt + both responses)."""
        return len(self.prompt[i]) + len(self.chosen[i]) + len(self.rejected[i])

    def digest(self, indices: list[int]) -> str:
        """SHA-256 of the token ids of ``indices`` (checks a saved reference column still fits)."""
        h = hashlib.sha256()
        revisions = [self.revision_prompt[g] for g in sorted(self.revision_prompt)]
        for i in indices:
            for ids in (self.prompt[i], self.chosen[i], self.rejected[i], *(r[i] for r in revisions)):
                h.update(torch.tensor(ids, dtype=torch.int64).numpy().tobytes())
                h.update(b"|")
        return h.hexdigest()

    def revision_view(self, given: str) -> TokenPairs:
        """The same pairs after the revision prompt ``R(x, y_given)`` instead of ``x`` (shares the lists;
        no reference column): :func:`pair_logprobs` of it gives ``log pi(y | R(x, y_given))``."""
        if given not in self.revision_prompt:
            raise RuntimeError(f"these pairs have no revision prompts for {given!r} (add_revision_prompts was not run)")
        n = len(self)
        return TokenPairs(self.revision_prompt[given], self.chosen, self.rejected, [None] * n, [None] * n, self.texts)

    def reference_columns(self) -> dict[str, list[Tensor | None]]:
        """Every cached reference column by name: ``chosen``, ``rejected``, then the revision ones."""
        return {"chosen": self.ref_chosen, "rejected": self.ref_rejected, **dict(sorted(self.ref_revision.items()))}


def tokenize_pairs(
    pairs: list[PreferencePair], tokenizer: Any, max_prompt_tokens: int, max_response_tokens: int
) -> tuple[TokenPairs, int]:
    """Tokenize ``pairs``: the prompt through the chat template (as the online loop's prompts), each
    response as its text's tokens followed by the end-of-turn (EOS) token, which is what the policy
    generates to end a reply. Pairs over a length limit are skipped and counted, never truncated.

    Returns the tokenized pairs that fit and the number skipped.
    """
    eos = tokenizer.eos_token_id
    out = TokenPairs([], [], [], [], [], [])
    skipped = 0
    for p in pairs:
        text = tokenizer.apply_chat_template(p.messages(), tokenize=False, add_generation_prompt=True)
        prompt = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        chosen = [*tokenizer(p.chosen, add_special_tokens=False)["input_ids"], eos]
        rejected = [*tokenizer(p.rejected, add_special_tokens=False)["input_ids"], eos]
        if len(prompt) > max_prompt_tokens or max(len(chosen), len(rejected)) > max_response_tokens:
            skipped += 1
            continue
        out.prompt.append(prompt)
        out.chosen.append(chosen)
        out.rejected.append(rejected)
        out.ref_chosen.append(None)
        out.ref_rejected.append(None)
        out.texts.append(p)
    if skipped:
        log.warning(
            "skipped %d preference pairs longer than max_prompt_tokens=%d / max_response_tokens=%d (never truncated)",
            skipped, max_prompt_tokens, max_response_tokens,
        )  # fmt: skip
    if pairs and not out.prompt:
        raise ValueError(
            f"every preference pair is longer than --max-prompt-tokens {max_prompt_tokens} or "
            f"--max-response-tokens {max_response_tokens}; raise them"
        )
    return out, skipped


def add_revision_prompts(tp: TokenPairs, tokenizer: Any, template: str) -> None:
    """Tokenize the revision prompts of every pair of ``tp`` (``tp.revision_prompt``) and make room for
    their reference columns: ``R(x, y)`` is the pair's prompt with the last user message rewritten by
    ``template`` around response ``y`` (``anypo.losses.revision.revision_messages``), through the chat
    template with the generation prompt. Not length-limited: a revision prompt is at most the pair's
    prompt, one of its responses and the template."""
    for given in SIDES:
        rows = []
        for p in tp.texts:
            msgs = revision_messages(p.messages(), getattr(p, given), template)
            text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            rows.append(list(tokenizer(text, add_special_tokens=False)["input_ids"]))
        tp.revision_prompt[given] = rows
        for target in SIDES:
            tp.ref_revision[revision_key(target, given, ref=True)] = [None] * len(tp)


def _pad(rows: list[list[int]], value: int, left: bool) -> tuple[Tensor, Tensor]:
    """[n, L] ids and mask of ``rows`` padded on the left or right to the longest."""
    n, L = len(rows), max((len(r) for r in rows), default=0)
    ids = torch.full((n, L), value, dtype=torch.long)
    mask = torch.zeros((n, L), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            sl = slice(L - len(r), L) if left else slice(0, len(r))
            ids[i, sl] = torch.tensor(r, dtype=torch.long)
            mask[i, sl] = 1
    return ids, mask


def pair_batch(tp: TokenPairs, idx: list[int], pad_id: int) -> RolloutBatch:
    """The ``2k`` rows of pairs ``idx`` as a ``RolloutBatch``: rows ``0..k-1`` the chosen responses,
    rows ``k..2k-1`` the rejected ones, each after its (left-padded) prompt; row ``i`` and ``k + i``
    share group ``i`` and the prompt, so a packed pass runs each prompt once."""
    k = len(idx)
    prompts = [tp.prompt[i] for i in idx] * 2
    responses = [tp.chosen[i] for i in idx] + [tp.rejected[i] for i in idx]
    prompt_ids, prompt_mask = _pad(prompts, pad_id, left=True)
    response_ids, response_mask = _pad(responses, pad_id, left=False)
    return RolloutBatch(
        response_mask=response_mask,
        group_ids=torch.arange(k).repeat(2),
        rewards=torch.zeros(2 * k),
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=response_ids,
    )


def pair_logprobs(model: torch.nn.Module, tp: TokenPairs, idx: list[int], pad_id: int, pack: bool = True):
    """Per-token log-probs of both responses of pairs ``idx`` under ``model`` (with grad if enabled).

    Returns ``(out_chosen, out_rejected, mask)``: two ``PolicyOutput`` with ``logprobs [k, T]`` (0 on
    padding) and the ``[2k, T]`` response mask (chosen rows first), ``T`` the longest response.
    """
    rb = pair_batch(tp, idx, pad_id)
    lp = response_logprobs(model, rb, 1.0, pack=pack).logprobs  # [2k, T]
    k = len(idx)
    return PolicyOutput(logprobs=lp[:k]), PolicyOutput(logprobs=lp[k:]), rb.response_mask


def _column(col: list[Tensor | None], idx: list[int], T: int, dtype: torch.dtype) -> Tensor:
    """[k, T] reference log-probs of pairs ``idx`` from the cached column ``col`` (0 on padding)."""
    t = torch.zeros((len(idx), T), dtype=dtype)
    for row, i in enumerate(idx):
        ref = col[i]
        if ref is None:
            raise RuntimeError(f"pair {i} has no cached reference log-probs (the reference pass skipped it)")
        t[row, : len(ref)] = ref.to(dtype)
    return t


def _ref_columns(tp: TokenPairs, idx: list[int], T: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """[k, T] reference log-probs of both responses of pairs ``idx`` (0 on padding)."""
    return _column(tp.ref_chosen, idx, T, dtype), _column(tp.ref_rejected, idx, T, dtype)


# ---------------------------------------------------------------------------------------------
# The data order: a seeded per-epoch shuffle, resumable by one counter
# ---------------------------------------------------------------------------------------------


class PairOrder:
    """The order in which an offline run visits its ``n`` training pairs.

    Epoch ``e`` is a permutation drawn from ``(seed, e)`` alone, and the epochs follow each other as
    one stream; ``position`` (pairs drawn so far) is the whole state, so a resumed run draws exactly
    what the uninterrupted one would have. The stream ends after ``epochs`` passes.
    """

    def __init__(self, n: int, seed: int, epochs: int):
        if n < 1:
            raise ValueError("no training pairs")
        self.n, self.seed, self.epochs = n, seed, epochs
        self.position = 0
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            gen = torch.Generator().manual_seed(stable_seed("pair-order", self.seed, epoch))
            self._perms = {epoch: torch.randperm(self.n, generator=gen).tolist()}
        return self._perms[epoch]

    @property
    def total(self) -> int:
        return self.n * self.epochs

    def done(self) -> bool:
        return self.position >= self.total

    def peek(self, start: int, count: int) -> list[int]:
        """Pair indices at stream positions ``start .. start + count - 1`` (clipped to the end)."""
        stop = min(start + count, self.total)
        return [self._perm(p // self.n)[p % self.n] for p in range(start, stop)]

    def next_pairs(self, count: int) -> list[int]:
        """The next ``count`` pair indices (fewer at the end of the last epoch); advances the stream."""
        out = self.peek(self.position, count)
        self.position += len(out)
        return out

    @property
    def epoch(self) -> float:
        """Passes completed so far (fractional)."""
        return self.position / self.n

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = int(state["position"])


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


class PrefLoop:
    """Everything an offline preference run holds: model, optimizer, pairs, reference column."""

    progress_keys = (("loss", "pref/loss"), ("acc", "pref/accuracy"))
    """What the progress bar shows (label, metric)."""

    @classmethod
    def build(cls, cfg: PrefTrainConfig, run_dir: Path) -> PrefLoop:
        self = cls.start(cfg, run_dir)
        self.load_pairs()
        self.loss_fn = registry.registry("preference_loss").fn_for(self.algo.loss)
        self.needs_ref = self.algo.needs("ref_logprobs")
        self.needs_revision = self.algo.needs("revision_logprobs")
        if self.needs_revision:
            template = self.algo.loss.revision_template  # declared next to needs_revision_logprobs
            for tp in (self.train_pairs, self.heldout_pairs):
                if tp is not None:
                    add_revision_prompts(tp, self.tokenizer, template)
        if self.needs_ref:
            self._reference_column(run_dir)  # the initial weights: before any update
        self.oracle_eval = self._oracle_evaluation()  # before any update: it keeps a copy of the initial weights
        self.make_optimizer(fused=True)
        return self

    def _oracle_evaluation(self):
        """The online loop's evaluation under ``cfg.eval_oracle`` (None without one)."""
        import copy

        from anypo.engines.hf import HFEngine
        from anypo.oracles import make_oracle
        from anypo.pref_eval import OracleEvaluation
        from anypo.tasks import get_task
        from anypo.trainer_setup import tokenize_prompts

        cfg = self.cfg
        if cfg.eval_oracle.kind == "none" or cfg.eval_every <= 0 or cfg.oracle_eval_prompts <= 0:
            return None
        task = get_task(cfg.eval_task)
        n = min(cfg.oracle_eval_prompts, cfg.eval_task.num_heldout)
        examples, ids, _ = tokenize_prompts(task.heldout_examples(n), self.tokenizer, cfg.max_prompt_tokens)
        initial = copy.deepcopy(self.model).eval().requires_grad_(False)
        initial_engine = HFEngine(initial, self.tokenizer)
        return OracleEvaluation(
            model=self.model, initial=initial, policy_engine=self._policy_engine(),
            initial_engine=lambda: initial_engine, tokenizer=self.tokenizer, pad_id=self.pad_id, examples=examples,
            prompt_ids=ids, oracle=make_oracle(cfg.eval_oracle, task), sampling=cfg.oracle_eval_sampling,
            candidates=cfg.eval_candidates, seed=cfg.seed, micro_batch_size=cfg.micro_batch_size,
            pack=cfg.pack_prompts, autocast=self.autocast,
            proxy=None if cfg.eval_proxy.kind == "none" else make_oracle(cfg.eval_proxy, task),
        )  # fmt: skip

    # ---- set-up the preference-shaped loops share (offline, online, reward model) ----
    @classmethod
    def start(cls, cfg: Any, run_dir: Path, wrap=None) -> Any:
        """A loop holding ``cfg``, the tokenizer and its pad id, and the model in train mode.

        ``wrap``: a function of the loaded causal LM returning the module to train (the reward
        model's head on the backbone); None: the LM itself. No pairs and no optimizer yet.
        """
        self = cls()
        self.cfg, self.run_dir, self.algo = cfg, run_dir, cfg.algo
        self.tokenizer = models.load_tokenizer(cfg.model.name)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.model = models.load_model(cfg.model, seed=cfg.seed)
        if wrap is not None:
            self.model = wrap(self.model)
        self.model.train()
        self.autocast = _autocast(cfg.precision)
        self.needs_ref = False
        self.needs_revision = False  # a loss with needs_revision_logprobs (offline loop only)
        self.reference_seconds = 0.0  # wall time of the reference pass (0 when read back from the run directory)
        self.engine = None  # the policy's sampling engine, built on first use (_policy_engine)
        self.verify = None  # the pass@k checker, built on the first pass@k evaluation
        self.oracle_eval = None  # the offline loop's oracle evaluation (--eval-oracle.kind)
        self.mid_update = False  # True while the weights change (the scaffold resets it once a step is logged)
        return self

    def load_pairs(self) -> None:
        """The preference data of ``cfg.data``, tokenized (training and held-out pairs), and its order."""
        from anypo.tasks.preference_data import load_preference_data

        cfg = self.cfg
        self.data = load_preference_data(cfg.data)
        lim = (cfg.max_prompt_tokens, cfg.max_response_tokens)
        self.train_pairs, self.skipped = tokenize_pairs(self.data.train, self.tokenizer, *lim)
        self.heldout_pairs = tokenize_pairs(self.data.heldout, self.tokenizer, *lim)[0] if self.data.heldout else None
        self.order = PairOrder(len(self.train_pairs), cfg.seed, cfg.epochs)

    def make_optimizer(self, fused: bool = False) -> None:
        """The optimizer of ``cfg.optimizer`` (AdamW by default) over the trainable parameters and the
        warm-up / decay schedule over ``cfg.steps`` steps.

        ``fused``: torch's fused AdamW kernel (the offline loop's; the others keep the default; adamw only).
        """
        from anypo.trainer_setup import make_optimizer, make_scheduler

        cfg = self.cfg
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(params, cfg, fused=fused)
        self.scheduler = make_scheduler(self.optimizer, cfg, total=cfg.steps)

    # ---- the reference column ----
    def _planned(self) -> list[int]:
        """The training pairs this run will visit: the first ``min(steps x pairs_per_step, epochs x n)``
        positions of the data order (known in advance: it depends on the seed only)."""
        cfg = self.cfg
        count = min(cfg.steps * cfg.pairs_per_step, self.order.total)
        return sorted(set(self.order.peek(0, count)))

    def _heldout_indices(self) -> list[int]:
        if self.heldout_pairs is None or self.cfg.eval_every <= 0:
            return []
        return list(range(min(self.cfg.eval_pairs, len(self.heldout_pairs))))

    def _reference_column(self, run_dir: Path) -> None:
        """Fill ``ref_chosen`` / ``ref_rejected`` of the planned training pairs and the evaluated
        held-out pairs with the current (initial) weights, or read them from the run directory."""
        from safetensors.torch import load_file, save_file

        splits = {"train": (self.train_pairs, self._planned())}
        if self._heldout_indices():
            splits["heldout"] = (self.heldout_pairs, self._heldout_indices())
        path = run_dir / REFERENCE_FILE
        digests = {f"{name}_digest": tp.digest(idx) for name, (tp, idx) in splits.items()}
        if path.exists():
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            if all(meta.get(k) == v for k, v in digests.items()):
                saved = load_file(str(path))
                for name, (tp, idx) in splits.items():
                    _unflatten(tp, idx, saved, name)
                return
            log.warning("%s does not match this run's pairs; recomputing it from the initial weights", path)
        tensors: dict[str, Tensor] = {}
        t0 = time.perf_counter()
        for name, (tp, idx) in splits.items():
            self._reference_pass(tp, idx)
            tensors.update(_flatten(tp, idx, name))
        self.reference_seconds = time.perf_counter() - t0
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(tensors, str(tmp), metadata=digests)
        tmp.replace(path)

    @torch.no_grad()
    def _reference_pass(self, tp: TokenPairs, idx: list[int]) -> None:
        """Reference log-probs of pairs ``idx`` with the model's current weights, in micro-batches."""
        was = self.model.training
        self.model.eval()
        try:
            for chunk in _chunks(sorted(idx, key=lambda i: -tp.length(i)), self.cfg.micro_batch_size):
                with self.autocast():
                    out_c, out_r, mask = pair_logprobs(self.model, tp, chunk, self.pad_id, self.cfg.pack_prompts)
                for row, i in enumerate(chunk):
                    tp.ref_chosen[i] = out_c.logprobs[row, : len(tp.chosen[i])].float().clone()
                    tp.ref_rejected[i] = out_r.logprobs[row, : len(tp.rejected[i])].float().clone()
                for given in tp.revision_prompt:  # the self-improver's reference, after R(x, y_given)
                    with self.autocast():
                        out_c, out_r, _ = pair_logprobs(
                            self.model, tp.revision_view(given), chunk, self.pad_id, self.cfg.pack_prompts
                        )
                    for target, out in (("chosen", out_c), ("rejected", out_r)):
                        col = tp.ref_revision[revision_key(target, given, ref=True)]
                        for row, i in enumerate(chunk):
                            col[i] = out.logprobs[row, : len(getattr(tp, target)[i])].float().clone()
        finally:
            self.model.train(was)

    # ---- one step ----
    def train_step(self, step: int) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """One optimizer step on the next ``pairs_per_step`` pairs; its metrics and sample records."""
        t0 = time.perf_counter()
        idx = self.order.next_pairs(self.cfg.pairs_per_step)
        m, per_pair = self.update(self.train_pairs, idx)
        tp = self.train_pairs
        prompt_tokens = sum(len(tp.prompt[i]) for i in idx)
        response_tokens = sum(len(tp.chosen[i]) + len(tp.rejected[i]) for i in idx)
        cost = [tp.texts[i].meta.get("generation_tokens") for i in idx]
        if idx and all(isinstance(c, (int, float)) for c in cost):  # pairs from `anypo pairs`: their sampling cost
            m["rollout/generated_tokens"] = float(sum(cost))
        step_s = time.perf_counter() - t0
        m.update(
            {
                "data/pairs": float(len(idx)),
                "data/epoch": self.order.epoch,
                "data/prompt_tokens": float(prompt_tokens),
                "data/response_tokens": float(response_tokens),
                "data/skipped_long_pairs": float(self.skipped),
                "budget/tokens": float(response_tokens),
                "time/step_s": step_s,
                "throughput/train_tok_s": (prompt_tokens + response_tokens) / max(step_s, 1e-9),
                "memory/peak_rss_gb": peak_rss_gb(),
            }
        )
        samples = []
        for i in idx[: self.cfg.log_samples]:
            p = tp.texts[i]
            rec = {"pair_index": i, "prompt": p.prompt[-1]["content"], "chosen": p.chosen, "rejected": p.rejected}
            rec.update(per_pair.get(i, {}))
            samples.append(rec)
        return m, samples

    def update(self, tp: TokenPairs, idx: list[int]) -> tuple[dict[str, float], dict[int, dict[str, float]]]:
        """One optimizer step on pairs ``idx`` of ``tp`` (see :meth:`accumulate`), then clip and step.

        None of the weights change (and ``train/skipped_updates`` is 1) when the loss or the gradient
        norm is not finite. Returns the step's metrics and, per pair, its log-ratios
        ``logratio_chosen`` / ``logratio_rejected`` (when the loss uses the reference).
        """
        cfg = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        self.mid_update = True  # the weights change from here until the scaffold has logged the step
        got = self.accumulate(tp, idx)
        if got is None:
            self.optimizer.zero_grad(set_to_none=True)
            return self._skipped(), {}
        out, per_pair = got
        t = time.perf_counter()
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        if not torch.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            return self._skipped(), {}
        no_signal = float(grad_norm) == 0.0  # an AdamW step on a zero gradient would still move the weights
        if not no_signal:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler_step()
        out["time/optimizer_s"] = time.perf_counter() - t
        out["train/grad_norm"] = float(grad_norm)
        out["train/lr"] = self.scheduler.get_last_lr()[0]
        out["train/skipped_updates"] = 0.0
        out["train/skipped_no_signal"] = float(no_signal)
        out["train/optimizer_steps"] = float(not no_signal)
        return out, per_pair

    def accumulate(self, tp: TokenPairs, idx: list[int]) -> tuple[dict[str, float], dict[int, dict[str, float]]] | None:
        """Forward and backward of the loss of pairs ``idx``, in micro-batches of ``micro_batch_size``
        pairs, the gradients accumulating in the parameters' ``.grad``.

        Every micro-batch's loss carries the step's global pair and chosen-token counts, so the
        micro-batch losses and gradients sum to those of the whole step, whatever the micro-batch
        size. Returns the step's loss metrics and the per-pair log-ratios, or None (gradients
        partly accumulated) when a micro-batch's loss is not finite.
        """
        cfg, clock = self.cfg, time.perf_counter
        P = len(idx)
        chosen_tokens = float(sum(len(tp.chosen[i]) for i in idx))
        all_tokens = chosen_tokens + float(sum(len(tp.rejected[i]) for i in idx))
        acc = MetricAccumulator()
        times = {"time/forward_s": 0.0, "time/backward_s": 0.0}
        per_pair: dict[int, dict[str, float]] = {}
        for chunk in _chunks(sorted(idx, key=lambda i: -tp.length(i)), cfg.micro_batch_size):
            t = clock()
            with self.autocast():  # the backward runs outside autocast, as recommended
                out_c, out_r, mask = pair_logprobs(self.model, tp, chunk, self.pad_id, cfg.pack_prompts)
                k = len(chunk)
                batch = PreferenceBatch(
                    chosen_mask=mask[:k],
                    rejected_mask=mask[k:],
                    num_pairs=float(P),
                    num_chosen_tokens=chosen_tokens,
                    extras=tp.extras_of(chunk, out_c.logprobs.dtype),
                )
                if self.needs_ref:
                    batch.ref_chosen_logprobs, batch.ref_rejected_logprobs = _ref_columns(
                        tp, chunk, mask.shape[1], out_c.logprobs.dtype
                    )
                if self.needs_revision:
                    batch.extras.update(self._revision_extras(tp, chunk, mask.shape[1], out_c.logprobs.dtype))
                res = self.loss_fn(out_c, out_r, batch, self.algo.loss)
                loss = res.loss.float()
            if not torch.isfinite(loss):
                return None
            t, times["time/forward_s"] = clock(), times["time/forward_s"] + clock() - t
            loss.backward()
            times["time/backward_s"] += clock() - t
            seq_share = k / P
            tok_share = float(mask.sum()) / max(all_tokens, 1.0)
            for key, v in res.metrics.items():
                acc.add(key, float(v), res.reduction(key), tok_share, seq_share)
            acc.add("loss/total", float(loss.detach()), "sum", tok_share, seq_share)
            if self.needs_ref:
                self._logratio_metrics(acc, out_c, out_r, batch, chunk, per_pair, seq_share, all_tokens)
        out = acc.result()
        out.update(times)
        return out, per_pair

    def _revision_extras(self, tp: TokenPairs, chunk: list[int], T: int, dtype: torch.dtype) -> dict[str, Tensor]:
        """The ``needs_revision_logprobs`` inputs of pairs ``chunk`` (``anypo.losses.revision``): the
        policy's log-probs of both responses after each revision prompt (one packed pass per prompt,
        with grad when enabled) and the cached reference's, all ``[k, T]`` like the plain pass."""
        out: dict[str, Tensor] = {}
        for given in SIDES:
            out_c, out_r, mask = pair_logprobs(
                self.model, tp.revision_view(given), chunk, self.pad_id, self.cfg.pack_prompts
            )
            if mask.shape[1] != T:  # the same responses, so the same padded length
                raise RuntimeError(f"revision pass: response length {mask.shape[1]} != {T}")
            out[revision_key("chosen", given)] = out_c.logprobs
            out[revision_key("rejected", given)] = out_r.logprobs
            for target in SIDES:
                key = revision_key(target, given, ref=True)
                out[key] = _column(tp.ref_revision[key], chunk, T, dtype)
        return out

    def scheduler_step(self) -> None:
        """Advance the learning-rate schedule by one planned step, taken or skipped (torch's warning
        about a schedule step before any optimizer step is expected here and silenced)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step\\(\\)` before", UserWarning)
            self.scheduler.step()

    def _skipped(self) -> dict[str, float]:
        """The metrics of a step whose update was skipped for a non-finite loss or gradient."""
        self.scheduler_step()  # the schedule follows planned steps, taken or skipped
        return {"train/skipped_updates": 1.0, "train/optimizer_steps": 0.0, "train/lr": self.scheduler.get_last_lr()[0]}

    @staticmethod
    def _logratio_metrics(acc, out_c, out_r, batch, chunk, per_pair, seq_share, all_tokens) -> None:
        """KL-ish diagnostics: how far the policy moved from the reference on the data's responses.

        ``kl/logratio_chosen`` / ``_rejected``: mean over pairs of ``h = log pi(y|x) - log pi_ref(y|x)``
        (sequence sums; not a KL, the responses are not the policy's samples); ``kl/logratio_token``:
        mean of ``lp - lp_ref`` over every response token of the step.
        """
        with torch.no_grad():
            h = []
            token_sum = 0.0
            for out, mask, ref in (
                (out_c, batch.chosen_mask, batch.ref_chosen_logprobs),
                (out_r, batch.rejected_mask, batch.ref_rejected_logprobs),
            ):
                d = torch.where(mask.bool(), out.logprobs.detach() - ref, 0.0)
                h.append(d.sum(-1))
                token_sum += float(d.sum())
            acc.add("kl/logratio_chosen", float(h[0].mean()), "seq_mean", 0.0, seq_share)
            acc.add("kl/logratio_rejected", float(h[1].mean()), "seq_mean", 0.0, seq_share)
            acc.add("kl/logratio_token", token_sum / max(all_tokens, 1.0), "sum", 0.0, seq_share)
            for row, i in enumerate(chunk):
                per_pair[i] = {"logratio_chosen": float(h[0][row]), "logratio_rejected": float(h[1][row])}

    # ---- evaluation ----
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out pairs: the loss and its metrics (``eval/loss``, ``eval/accuracy``,
        ``eval/reward_margin``, ...); built-in pairs: ``eval/pass@k`` on the task's held-out prompts; with
        ``eval_oracle``: the online loop's oracle evaluation (:class:`anypo.pref_eval.OracleEvaluation`)."""
        out: dict[str, float] = {}
        idx = self._heldout_indices()
        if idx:
            out.update(self._pair_eval(self.heldout_pairs, idx))
        if self.data.task is not None and self.cfg.eval_prompts > 0:
            out.update(self._pass_at_k())
        if self.oracle_eval is not None:
            out.update(self.oracle_eval())
        return out

    def _pair_eval(self, tp: TokenPairs, idx: list[int]) -> dict[str, float]:
        """The loss's metrics on pairs ``idx`` (their micro-batches combined as in training)."""
        was = self.model.training
        self.model.eval()
        acc = MetricAccumulator()
        chosen_tokens = float(sum(len(tp.chosen[i]) for i in idx))
        try:
            for chunk in _chunks(idx, self.cfg.micro_batch_size):
                with self.autocast():
                    out_c, out_r, mask = pair_logprobs(self.model, tp, chunk, self.pad_id, self.cfg.pack_prompts)
                k = len(chunk)
                batch = PreferenceBatch(
                    chosen_mask=mask[:k], rejected_mask=mask[k:], num_pairs=float(len(idx)),
                    num_chosen_tokens=chosen_tokens, extras=tp.extras_of(chunk, out_c.logprobs.dtype),
                )  # fmt: skip
                if self.needs_ref:
                    batch.ref_chosen_logprobs, batch.ref_rejected_logprobs = _ref_columns(
                        tp, chunk, mask.shape[1], out_c.logprobs.dtype
                    )
                if self.needs_revision:
                    with self.autocast():
                        batch.extras.update(self._revision_extras(tp, chunk, mask.shape[1], out_c.logprobs.dtype))
                res = self.loss_fn(out_c, out_r, batch, self.algo.loss)
                for key, v in res.metrics.items():
                    acc.add(key, float(v), res.reduction(key), 0.0, k / len(idx))
        finally:
            self.model.train(was)
        return {"eval/" + k.split("/", 1)[1]: v for k, v in acc.result().items()}

    def _policy_engine(self):
        """The engine sampling from the policy (one for pass@k and the oracle evaluation), built on first use."""
        from anypo.engines import make_engine

        if self.engine is None:
            self.engine = make_engine("hf", self.model, self.tokenizer)
        return self.engine

    def _pass_at_k(self) -> dict[str, float]:
        from anypo.evaluate import evaluate as run_eval
        from anypo.evaluate import mean_pass_at_k
        from anypo.trainer_setup import make_verifier, tokenize_prompts

        cfg = self.cfg
        if self.verify is None:
            examples = self.data.heldout_examples[: cfg.eval_prompts]
            self.eval_examples, self.eval_ids, _ = tokenize_prompts(examples, self.tokenizer, cfg.max_prompt_tokens)
            self.verify, _ = make_verifier(self.data.task)

        def score(i: int, text: str, n_tok: int, trunc: bool) -> float:
            return self.verify(self.eval_examples[i], text)

        with self.autocast():
            rewards, _ = run_eval(
                self._policy_engine(), self.tokenizer, self.eval_ids, score, cfg.eval_samples, cfg.eval_sampling,
                seed=cfg.seed + 12345,
            )  # fmt: skip
        correct = [[r >= 1.0 for r in row] for row in rewards]
        ks = sorted({1, cfg.eval_samples})
        return {f"eval/pass@{k}": v for k, v in mean_pass_at_k(correct, ks).items()}

    # ---- what the run scaffold (anypo.run) asks of a loop ----
    def done(self) -> bool:
        """True once the last epoch's pairs are all drawn (the scaffold ends the run)."""
        return self.order.done()

    def checkpoint_tensors(self) -> dict[str, dict[str, Tensor]]:
        return {"policy": checkpoint.trainable_state(self.model)}

    def checkpoint_state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def step_state(self) -> dict[str, Any]:
        return {"order": self.order.state_dict()}

    def load_checkpoint(self, tensors: dict[str, dict[str, Tensor]], state: dict[str, Any]) -> None:
        self.model.load_state_dict(tensors["policy"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.order.load_state_dict(state["order"])

    def describe(self) -> str:
        cfg = self.cfg
        loss_name = registry.registry("preference_loss").name_of(cfg.algo.loss)
        method = (
            f"Preset `{cfg.preset}` (preference loss `{loss_name}`)" if cfg.preset else f"Preference loss `{loss_name}`"
        )
        return (
            f"{method} on preference data `{cfg.data.path or cfg.data.name}` ({len(self.train_pairs)} training pairs), "
            f"model `{cfg.model.name}`: up to {cfg.steps} steps of {cfg.pairs_per_step} pairs "
            f"(at most {cfg.epochs} epoch(s)), lr {cfg.lr}."
        )

    def export(self, out: Path) -> None:
        from anypo.trainer_setup import export_final

        export_final(self.model, self.tokenizer, out)

    def close(self) -> None:
        """Nothing to release: the reference column stays in the run directory for --resume."""


# ---- helpers ----
def _autocast(precision: str):
    """A factory of the autocast context of ``precision`` (fp32: a no-op)."""
    return lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def _chunks(idx: list[int], size: int) -> list[list[int]]:
    return [idx[s : s + size] for s in range(0, len(idx), size)]


def _flatten(tp: TokenPairs, idx: list[int], name: str) -> dict[str, Tensor]:
    """The reference columns of pairs ``idx`` as flat tensors (for the safetensors file)."""
    out = {f"{name}/index": torch.tensor(idx, dtype=torch.int64)}
    for side, col in tp.reference_columns().items():
        out[f"{name}/{side}"] = torch.cat([col[i] for i in idx]) if idx else torch.zeros(0)
        out[f"{name}/{side}_len"] = torch.tensor([len(col[i]) for i in idx], dtype=torch.int64)
    return out


def _unflatten(tp: TokenPairs, idx: list[int], saved: dict[str, Tensor], name: str) -> None:
    """Inverse of :func:`_flatten` into ``tp``'s reference column."""
    if saved[f"{name}/index"].tolist() != idx:
        raise RuntimeError(f"{REFERENCE_FILE}: the saved {name} pairs are not this run's")
    for side, col in tp.reference_columns().items():
        parts = torch.split(saved[f"{name}/{side}"], saved[f"{name}/{side}_len"].tolist())
        for i, t in zip(idx, parts, strict=True):
            col[i] = t.clone()
