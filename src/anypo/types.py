"""The data model shared by every part of anypo.

Fixed symbols used in every shape comment of the project:

* ``B`` prompts per step, ``G`` samples per prompt, ``N = B * G`` sequences,
* ``P`` padded prompt tokens, ``T`` padded response tokens, ``V`` vocabulary size.

Every tensor of a batch is float32 or float64 (masks and ids may be integer or bool); parts keep the
dtype of their inputs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch
from torch import Tensor

if TYPE_CHECKING:
    from anypo.rollout.replay import Replay

__all__ = [
    "LossOutput",
    "LossScale",
    "PartConfig",
    "PolicyOutput",
    "PreferenceBatch",
    "RewardResult",
    "RolloutBatch",
]


@dataclass(frozen=True)
class LossScale:
    """Global counts of the mini-batch a micro-batch belongs to.

    A loss computed on a micro-batch with this scale, summed over the micro-batches of one
    mini-batch, equals the loss of the whole mini-batch (and so do the gradients). Without it each
    micro-batch would normalise by its own token count: a known bug class in RL frameworks.

    Attributes:
        num_tokens: number of response tokens (``response_mask.sum()``) in the whole mini-batch.
        num_seqs: number of sequences in the whole mini-batch.
        norm_length: the constant length of the ``seq_mean_token_sum_norm`` aggregation (Dr. GRPO).
            The online loop sets it to the generation budget ``max_new_tokens`` for every
            mini-batch; ``RolloutBatch.scale()`` of a batch without a scale uses its padded length
            ``T``, so that micro-batches (re-padded shorter) keep dividing by the same constant.
            ``None``: the padded length of the tensor being aggregated.
    """

    num_tokens: float
    num_seqs: float
    norm_length: float | None = None


@dataclass
class RolloutBatch:
    """A batch of sampled responses with everything the parts may need.

    Only ``response_mask``, ``group_ids`` and ``rewards`` are required; every other field defaults to
    ``None`` and a part that needs one raises an error naming it.

    Attributes:
        response_mask: [N, T] 1 on response tokens the loss may touch, 0 on padding and on tool or
            environment output tokens.
        group_ids: [N] integer id of the prompt each sample answers; samples of one prompt share it.
        rewards: [N] outcome reward of each sequence.
        prompt_ids: [N, P] prompt token ids, left-padded.
        prompt_mask: [N, P] 1 on real prompt tokens.
        response_ids: [N, T] sampled token ids, right-padded.
        token_rewards: [N, T] optional per-token rewards (added to the outcome reward where used).
        old_logprobs: [N, T] log-probabilities of the sampled tokens under the behaviour policy.
        ref_logprobs: [N, T] log-probabilities under the frozen reference policy.
        values: [N, T] critic values V(s_t) before each response token.
        advantages: [N, T] advantages, filled by the advantage part.
        returns: [N, T] value targets, filled by value-based advantage parts.
        truncated: [N] bool, True where the response hit the length limit.
        extras: per-sample information (correctness, feedback text, turn boundaries, ...).
        loss_scale: global counts of the enclosing mini-batch; ``None`` means this batch is the
            whole mini-batch.
        rollout_logprobs: [N, T] log-probabilities of the sampled tokens as reported by the rollout
            engine (e.g. vLLM), when the learner recomputes ``old_logprobs`` itself. Ratio-based
            losses use ``exp(old_logprobs - rollout_logprobs)`` for truncated importance sampling
            (their ``tis`` option); ``None`` when the engine's log-probs are the ``old_logprobs``.
        greedy_rewards: [N] reward of the greedy response to each row's prompt (the same value for
            every row of a group), when a part ``needs_greedy_rewards`` (ReMax's baseline); NaN where
            the greedy response's reward failed.
        staleness: [N] how many training steps old the policy that generated each row is when it is
            trained on (0: the current policy's own rollouts); set by the loop under a ``Replay``
            schedule.
        part_state: the calling part's own state across steps (``PartConfig.stateful``), set by the
            loop just before it calls that part; ``None`` for parts without state.
        part_metrics: diagnostics of the advantage part, written with ``add_metric`` while it runs
            (an advantage returns a tensor only: this is its ``LossOutput.metrics``). The loop sets
            an empty dict before the call, logs every entry ``k`` as ``advantage/<k>`` and resets it
            to ``None``.
    """

    response_mask: Tensor
    group_ids: Tensor
    rewards: Tensor
    prompt_ids: Tensor | None = None
    prompt_mask: Tensor | None = None
    response_ids: Tensor | None = None
    token_rewards: Tensor | None = None
    old_logprobs: Tensor | None = None
    ref_logprobs: Tensor | None = None
    values: Tensor | None = None
    advantages: Tensor | None = None
    returns: Tensor | None = None
    truncated: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    loss_scale: LossScale | None = None
    rollout_logprobs: Tensor | None = None
    greedy_rewards: Tensor | None = None
    staleness: Tensor | None = None
    part_state: dict[str, Any] | None = None
    part_metrics: dict[str, float] | None = None

    @property
    def num_seqs(self) -> int:
        return int(self.response_mask.shape[0])

    @property
    def mask(self) -> Tensor:
        """[N, T] the response mask in the float dtype of the rewards."""
        return self.response_mask.to(self.rewards.dtype)

    def scale(self) -> LossScale:
        """The global counts to normalise by: ``loss_scale`` if set, else this batch's own."""
        if self.loss_scale is not None:
            return self.loss_scale
        return LossScale(
            num_tokens=float(self.response_mask.sum()),
            num_seqs=float(self.num_seqs),
            norm_length=float(self.response_mask.shape[-1]),
        )

    def add_metric(self, key: str, value: float | Tensor) -> None:
        """Record a scalar diagnostic of the part being called (e.g. GPG's ``alpha``) in
        ``part_metrics``; the online loop logs it as ``advantage/<key>`` (``key`` without that prefix)."""
        if self.part_metrics is None:
            self.part_metrics = {}
        self.part_metrics[key] = float(value)

    def require(self, name: str, hint: str) -> Tensor:
        """Return the tensor field ``name`` or raise an error saying how to provide it."""
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"RolloutBatch.{name} is None, but this part needs it: {hint}")
        return value

    def select(self, index: Tensor | slice, loss_scale: LossScale | None = None) -> RolloutBatch:
        """Rows ``index`` of every per-sample field (extras lists and tensors included)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == self.num_seqs:
                out[f.name] = v[index]
            else:
                out[f.name] = v
        out["extras"] = {k: _select_extra(v, index, self.num_seqs) for k, v in self.extras.items()}
        out["loss_scale"] = loss_scale if loss_scale is not None else self.loss_scale
        return RolloutBatch(**out)

    def trimmed(self) -> RolloutBatch:
        """The same rows with padding columns that no row uses removed.

        Response fields ([N, T]) are cut to the longest response, prompt fields ([N, P]) to the
        longest prompt (prompts are left-padded). The loss scale keeps the untrimmed padded length as
        ``norm_length``, so trimming never changes a loss.
        """
        T = self.response_mask.shape[1]
        # the last masked column, not the count: a response may start with unmasked context (a roll-in
        # prefix) or hold unmasked tool output, and every column up to its last action must stay
        cols = torch.arange(T, device=self.response_mask.device) + 1
        t_keep = int(torch.where(self.response_mask.bool(), cols, 0).amax()) if self.num_seqs and T else 0
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in ("prompt_ids", "prompt_mask"):
                out[f.name] = v
            elif isinstance(v, Tensor) and v.dim() == 2 and v.shape[1] == T:
                out[f.name] = v[:, :t_keep]
            else:
                out[f.name] = v
        if self.prompt_mask is not None:
            p_keep = int(self.prompt_mask.sum(1).max())
            out["prompt_ids"] = self.prompt_ids[:, self.prompt_ids.shape[1] - p_keep :]
            out["prompt_mask"] = self.prompt_mask[:, self.prompt_mask.shape[1] - p_keep :]
        out["loss_scale"] = self.scale()
        return RolloutBatch(**out)

    def to(self, device: torch.device | str) -> RolloutBatch:
        kw = {
            f.name: (
                getattr(self, f.name).to(device) if isinstance(getattr(self, f.name), Tensor) else getattr(self, f.name)
            )
            for f in dataclasses.fields(self)
        }
        return RolloutBatch(**kw)


def _select_extra(v: Any, index: Tensor | slice, n: int) -> Any:
    if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == n:
        return v[index]
    if isinstance(v, list) and len(v) == n:
        if isinstance(index, slice):
            return v[index]
        idx = index.tolist() if index.dtype != torch.bool else index.nonzero().flatten().tolist()
        return [v[i] for i in idx]
    return v


@dataclass
class PreferenceBatch:
    """Pairs of chosen and rejected responses for preference optimisation.

    Row ``i`` of every chosen field and row ``i`` of every rejected field form pair ``i``; the chosen
    and rejected tensors may have different padded lengths ``T``.

    Attributes:
        chosen_mask: [N, T] response mask of the chosen responses.
        rejected_mask: [N, T] response mask of the rejected responses.
        ref_chosen_logprobs: [N, T] reference log-probabilities of the chosen tokens.
        ref_rejected_logprobs: [N, T] reference log-probabilities of the rejected tokens.
        extras: per-pair information (margins, scores, ...).
        num_pairs: the global number of pairs of the mini-batch this batch belongs to (a float
            scalar, not a tensor). Preference losses divide their per-pair sum by it, so that the
            losses (and gradients) of the micro-batches of a mini-batch sum to the mini-batch's.
            ``None``: this batch is the whole mini-batch (``N``).
        num_chosen_tokens: the global number of chosen response tokens (``chosen_mask.sum()``) of
            the mini-batch, for the token-mean SFT term of ``rpo`` / ``sft``; ``None``: this
            batch's own count.
    """

    chosen_mask: Tensor
    rejected_mask: Tensor
    ref_chosen_logprobs: Tensor | None = None
    ref_rejected_logprobs: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    num_pairs: float | None = None
    num_chosen_tokens: float | None = None


@dataclass
class PolicyOutput:
    """What the policy forward pass gives the losses.

    Attributes:
        logprobs: [N, T] log-probabilities of the sampled tokens under the current policy (with grad).
        entropy: [N, T] entropy of the next-token distribution; only when a part declares
            ``needs_entropy``.
        logits: [N, T, V] raw logits; only when a part declares ``needs_logits`` (they are large).
    """

    logprobs: Tensor
    entropy: Tensor | None = None
    logits: Tensor | None = None


MetricReduction = Literal["sum", "token_mean", "seq_mean", "max", "min"]


@dataclass
class LossOutput:
    """A loss to minimise and its diagnostics.

    A loss is computed per micro-batch and the loop combines the micro-batches' metrics into the
    mini-batch's, so that no logged value depends on ``micro_batch_size``. How a metric combines is
    ``reduction(key)``: ``sum`` for values aggregated with the mini-batch's global counts (the loss
    itself, a KL estimate: their micro-batch values are partial sums), ``token_mean`` / ``seq_mean``
    for averages over this micro-batch's tokens / sequences (clip fractions, ratio means), ``max`` /
    ``min`` for extremes. Unlisted keys: ``max`` / ``min`` by a ``_max`` / ``_min`` suffix, else
    ``token_mean``.

    Attributes:
        loss: 0-d tensor, the quantity minimised.
        metrics: namespaced scalars (``policy/clipfrac``, ``kl/ref``, ...).
        reductions: metric name -> how it combines over micro-batches (see above).
    """

    loss: Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    reductions: dict[str, MetricReduction] = field(default_factory=dict)

    def reduction(self, key: str) -> MetricReduction:
        """How metric ``key`` combines over the micro-batches of a mini-batch."""
        if key in self.reductions:
            return self.reductions[key]
        if key.endswith("_max"):
            return "max"
        if key.endswith("_min"):
            return "min"
        return "token_mean"


@dataclass
class RewardResult:
    """A reward with its parts and optional feedback text for the policy or the logs."""

    score: float
    components: dict[str, float] = field(default_factory=dict)
    feedback: str | None = None
    error: bool = False
    """True when a term raised or returned a non-finite or non-numeric value: the score is then not a
    judgement of the sample, and the online loop drops the sample (counted as ``reward/errors``)."""


@dataclass(frozen=True)
class PartConfig:
    """Base of every part's config: the needs the training loops act on.

    The loops never compare part names; they read these properties. A config overrides the ones it
    needs (as a property when the need depends on a field, e.g. a KL term with ``coef == 0``).
    """

    @property
    def needs_ref_logprobs(self) -> bool:
        """The reference model's log-probabilities must be in the batch."""
        return False

    @property
    def needs_values(self) -> bool:
        """A critic must produce ``values``."""
        return False

    @property
    def needs_entropy(self) -> bool:
        """The policy forward must return per-token entropy."""
        return False

    @property
    def needs_logits(self) -> bool:
        """The policy forward must return full logits."""
        return False

    @property
    def requires_on_policy(self) -> bool:
        """The part is only correct on data from the current policy (one update per rollout batch): the
        config check refuses it with ``ppo_epochs > 1`` or several mini-batches."""
        return False

    @property
    def off_policy_option(self) -> str:
        """A setting of this part under which it is correct off-policy (``""``: none), which the config
        check names when it refuses a ``requires_on_policy`` part with several updates per rollout."""
        return ""

    @property
    def group_relative(self) -> bool:
        """The part compares the samples of a prompt with each other: groups need at least 2 samples."""
        return False

    @property
    def needs_rollout_logprobs(self) -> bool:
        """The engine's own log-probs must sit next to the learner's (``rollout_logprobs`` next to
        ``old_logprobs``): the loop then recomputes the old log-probs with the learner on every batch."""
        return False

    @property
    def needs_old_logprobs_before_update(self) -> bool:
        """The part reads ``old_logprobs`` before the loss (in the advantages or a mini-batch preparation),
        so the loop must fill them before the update. Otherwise, where the engine's log-probs are not
        the policy's and the step is on-policy, the loop takes them from the training forward itself
        (detached: the first update's ratio is exactly 1) and the batch holds ``old_logprobs = None``
        until the loss; the engine's are ``rollout_logprobs``."""
        return self.needs_minibatch_prepare

    @property
    def needs_greedy_rewards(self) -> bool:
        """The reward of one greedy response per prompt must be in the batch (``greedy_rewards``); the
        loop generates and scores it, and never trains on it."""
        return False

    @property
    def needs_whole_minibatch(self) -> bool:
        """The loss must see each mini-batch in one piece: the loop runs it as a single micro-batch."""
        return False

    @property
    def needs_minibatch_prepare(self) -> bool:
        """The part selects tokens by statistics of the whole mini-batch (Clip-Cov, KL-Cov): the loop
        calls ``prepare_minibatch`` once per mini-batch, before splitting it into micro-batches."""
        return False

    def prepare_minibatch(self, mini: RolloutBatch, logprobs: Tensor, seed: int) -> None:
        """Write per-token selections of the mini-batch ``mini`` into ``mini.extras`` ([N, T] tensors,
        which its micro-batches then carry row by row). Called only when ``needs_minibatch_prepare``.

        Args:
            mini: the mini-batch (``old_logprobs``, ``advantages``, ``response_mask``, ``loss_scale``).
            logprobs: [N, T] log-probs of its tokens under the weights of this optimizer step (no
                grad; ``old_logprobs`` itself at the first update of an on-policy step).
            seed: for random choices; the loop derives it from the run seed, the step and the
                mini-batch's index in the step, so a resumed run draws the same.
        """

    @property
    def replay(self) -> Replay | None:
        """Stale rollouts this part needs (a ``Replay`` schedule), or None. ``AlgoConfig.replay``, when
        set, takes precedence (``AlgoConfig.replay_schedule``)."""
        return None

    # ---- state kept across steps (dual variables, running statistics, controllers) ----
    @property
    def stateful(self) -> bool:
        """The part keeps state across steps. The loop then holds ``init_state()`` for it, hands it to
        the part as ``batch.part_state`` on every call, calls ``update_state`` after every optimizer
        step and saves it in every checkpoint (exact resume). The loop logs nothing of it."""
        return False

    def init_state(self) -> dict[str, Any]:
        """The state at step 0: a dict of floats, ints, lists or tensors (saved with ``torch.save``)."""
        return {}

    def update_state(self, state: dict[str, Any], metrics: dict[str, float]) -> None:
        """Update ``state`` in place after an optimizer step; ``metrics`` are that mini-batch's combined
        metrics (every part's, micro-batch independent). Default: nothing. The part's function may
        also change ``batch.part_state`` in place when it is called (an advantage part: once a step)."""


class AdvantageFn(Protocol):
    def __call__(self, batch: RolloutBatch, cfg: Any) -> Tensor: ...


class PolicyLossFn(Protocol):
    def __call__(self, out: PolicyOutput, batch: RolloutBatch, cfg: Any) -> LossOutput: ...


class RegularizerFn(Protocol):
    def __call__(self, out: PolicyOutput, batch: RolloutBatch, cfg: Any) -> LossOutput: ...


class PreferenceLossFn(Protocol):
    def __call__(
        self, out_chosen: PolicyOutput, out_rejected: PolicyOutput, batch: PreferenceBatch, cfg: Any
    ) -> LossOutput: ...


class Sampler(Protocol):
    """See ``anypo.samplers.uniform`` for what the loop calls and when."""

    def next_prompts(self, step: int) -> list[int]: ...
    def group_sizes(self, indices: list[int], group_size: int) -> list[int]: ...
    def observe(self, batch: RolloutBatch) -> None: ...
    def keep(self, batch: RolloutBatch) -> Tensor: ...
    def rescore_prompts(self, step: int) -> tuple[list[int], int]: ...
    def rescore(self, batch: RolloutBatch) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class RewardFn(Protocol):
    def __call__(self, sample: Any) -> float | RewardResult: ...


@dataclass
class Sample:
    """One completed response, as reward functions see it.

    Attributes:
        prompt: the task's prompt text (the user message, before the chat template).
        completion: the decoded response text.
        answer: the reference answer of the task, if any.
        num_tokens: number of response tokens generated.
        max_tokens: the generation limit in tokens (``max_new_tokens``).
        truncated: True when the response hit ``max_tokens`` without stopping.
        meta: task-specific information (numbers of a countdown puzzle, a JSON schema, ...).
    """

    prompt: str
    completion: str
    answer: str | None = None
    num_tokens: int = 0
    max_tokens: int = 0
    truncated: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
