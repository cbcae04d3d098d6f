"""SDPO's reprompt: each sample's teacher context, built from a successful sibling and / or the
verifier's feedback (rollout part ``sdpo_reprompt``; the loss is ``anypo.losses.sdpo``)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass

from anypo.losses.sdpo import REPROMPTED, TEACHER_PROMPT
from anypo.rollout.groups import GroupRollout, Request
from anypo.rollout.parts import ROLLOUTS, RolloutPart
from anypo.types import PartConfig, RolloutBatch

__all__ = ["SDPOReprompt", "SDPORepromptConfig", "reprompt_text", "successful_sibling"]

_THINK = re.compile(r"<think>.*?</think>\s*", flags=re.DOTALL)


@dataclass(frozen=True)
class SDPORepromptConfig(PartConfig):
    """SDPO's teacher context: the original question with a successful sibling's answer and / or the
    verifier's feedback on this sample, for the self-teacher of the ``sdpo`` loss.

    Paper: "Reinforcement Learning via Self-Distillation", https://arxiv.org/abs/2601.20802. As the
    official ``verl/trainer/ppo/ray_trainer.py::_maybe_build_self_distillation_batch``
    (github.com/lasgroup/SDPO, commit 0e6d510), per sample ``i`` of group ``u``:

        S_u   = the samples j of u with reward R_j >= success_threshold (in row order)
        sol_i = the first of S_u (without i itself when dont_reprompt_on_self_success), or none
        fb_i  = the reward's feedback on i (include_feedback; with feedback_only_without_solution only
                when sol_i is none)
        if sol_i or fb_i: user message = reprompt_template(prompt, solution_template(sol_i),
                          feedback_template(fb_i)), through the chat template; g_i = 1
        else: the original prompt, g_i = 0 (the row is not distilled)

    The teacher then scores the same response tokens after this prompt. ``prompt`` is the example's
    user message before the task's chat template (the code: the last user message's content).

    Writes ``extras["sdpo_teacher_prompt"]`` (token ids per row) and ``extras["sdpo_reprompted"]``
    (``g_i``); logs ``rollout/sdpo_success_group_frac``, ``rollout/sdpo_reprompt_frac``,
    ``rollout/sdpo_feedback_frac``. Deviation: a reprompt longer than ``max_reprompt_tokens`` is cut
    on the right (the code's ``reprompt_truncation="right"``).
    """

    success_threshold: float = 1.0
    """A sample with reward >= this is a successful demonstration (success_reward_threshold)."""
    dont_reprompt_on_self_success: bool = False
    """Never show a sample its own answer (the paper's runs: True)."""
    include_feedback: bool = False
    """Add the reward's feedback text (``RewardResult.feedback``) to the reprompt (include_environment_feedback)."""
    feedback_only_without_solution: bool = False
    """Use the feedback only for samples without a successful sibling."""
    remove_thinking: bool = False
    """Strip ``<think>...</think>`` from the demonstration (remove_thinking_from_demonstration)."""
    max_reprompt_tokens: int = 10240
    """Longest teacher prompt in tokens (max_reprompt_len); longer ones are cut on the right."""
    reprompt_template: str = "{prompt}{solution}{feedback}\n\nCorrectly solve the original question.\n"
    """The teacher's user message (the code's reprompt_template)."""
    solution_template: str = "\nCorrect solution:\n\n{successful_previous_attempt}\n\n"
    """How a successful sibling is shown (solution_template)."""
    feedback_template: str = "\nThe following is feedback from your unsuccessful earlier attempt:\n\n{feedback_raw}\n\n"
    """How the feedback is shown (feedback_template)."""

    def __post_init__(self) -> None:
        if self.max_reprompt_tokens < 1:
            raise ValueError(f"SDPORepromptConfig.max_reprompt_tokens must be >= 1, got {self.max_reprompt_tokens}")
        for field, keys in (
            ("reprompt_template", ("{prompt}", "{solution}", "{feedback}")),
            ("solution_template", ("{successful_previous_attempt}",)),
            ("feedback_template", ("{feedback_raw}",)),
        ):
            missing = [k for k in keys if k not in getattr(self, field)]
            if missing:
                raise ValueError(f"SDPORepromptConfig.{field} must contain {', '.join(missing)}")


def successful_sibling(
    i: int, rewards: Sequence[float], groups: Sequence[int], threshold: float, not_self: bool
) -> int | None:
    """The row of the first sample of row ``i``'s group with reward >= ``threshold`` (not ``i`` itself
    when ``not_self``), or None."""
    for j, (r, g) in enumerate(zip(rewards, groups, strict=True)):
        if g == groups[i] and r >= threshold and not (not_self and j == i):
            return j
    return None


def reprompt_text(cfg: SDPORepromptConfig, prompt: str, solution: str | None, feedback: str | None) -> str | None:
    """The teacher's user message, or None when there is neither a solution nor feedback to show."""
    if solution is None and feedback is None:
        return None
    if solution is not None and cfg.remove_thinking:
        solution = _THINK.sub("", solution)
    sol = "" if solution is None else cfg.solution_template.format(successful_previous_attempt=solution)
    fb = "" if feedback is None else cfg.feedback_template.format(feedback_raw=feedback)
    return cfg.reprompt_template.format(prompt=prompt, solution=sol, feedback=fb)


@ROLLOUTS.register("sdpo_reprompt", config=SDPORepromptConfig)
class SDPOReprompt(RolloutPart):
    """Plain groups, each row given its SDPO teacher prompt (see ``SDPORepromptConfig``)."""

    cfg: SDPORepromptConfig

    def __init__(self, cfg: SDPORepromptConfig, groups: GroupRollout):
        super().__init__(cfg, groups)

    def collect(self, requests: Sequence[Request], seed: int, step: int, group_offset: int = 0) -> RolloutBatch:
        batch = self.groups.collect(requests, seed, group_offset)
        self.annotate(batch)
        return batch

    def annotate(self, batch: RolloutBatch) -> None:
        """Write the teacher prompts and flags of ``batch``'s rows into its extras (in place)."""
        from anypo.tasks import format_prompt

        cfg, g = self.cfg, self.groups
        if g.examples is None:
            raise ValueError("sdpo_reprompt needs the training examples: GroupRollout(examples=...)")
        rewards, gids = batch.rewards.tolist(), batch.group_ids.tolist()
        texts, index = batch.extras["text"], batch.extras["prompt_index"]
        feedback = batch.extras.get("feedback") or [None] * batch.num_seqs
        prompts, flags, n_fb = [], [], 0
        for i in range(batch.num_seqs):
            j = successful_sibling(i, rewards, gids, cfg.success_threshold, cfg.dont_reprompt_on_self_success)
            sol = texts[j] if j is not None else None
            fb = feedback[i] if cfg.include_feedback and isinstance(feedback[i], str) and feedback[i].strip() else None
            if fb is not None and cfg.feedback_only_without_solution and sol is not None:
                fb = None
            ex = g.examples[int(index[i])]
            text = reprompt_text(cfg, ex.prompt, sol, fb)
            if text is None:
                prompts.append(list(g.prompt_ids[int(index[i])]))
                flags.append(False)
                continue
            ids = g.tokenizer(
                format_prompt(dataclasses.replace(ex, prompt=text), g.tokenizer), add_special_tokens=False
            )
            prompts.append(list(ids["input_ids"])[: cfg.max_reprompt_tokens])
            flags.append(True)
            n_fb += fb is not None
        batch.extras[TEACHER_PROMPT] = prompts
        batch.extras[REPROMPTED] = flags
        n = max(batch.num_seqs, 1)
        good = {gid for gid, r in zip(gids, rewards, strict=True) if r >= cfg.success_threshold}
        self.metrics["rollout/sdpo_success_group_frac"] = len(good) / max(len(set(gids)), 1)
        self.metrics["rollout/sdpo_reprompt_frac"] = sum(flags) / n
        self.metrics["rollout/sdpo_feedback_frac"] = n_fb / n
