"""Revision-conditioned log-probs: what a preference loss that declares ``needs_revision_logprobs`` gets.

One network can play two roles: the generator ``pi(y | x)`` and a self-improver ``pi(y' | x, y)``
that rewrites a given response ``y`` into a better one (SRPO, arXiv 2406.01660). The second role is
the same model on a *revision prompt* ``R(x, y)``: the prompt ``x`` whose last user message is
rewritten by a template into "here is the question, here is an answer, improve it".

A loss config that sets ``needs_revision_logprobs`` (and has a ``revision_template`` field) gets from
the preference loop (``anypo.train_pref``), for every pair ``(x, y_w, y_l)`` and each ``given`` in
``{chosen, rejected}``, the per-token log-probs of both responses after ``R(x, y_given)``:

    extras["revision_<target>_given_<given>"]      [k, T]  policy, with grad
    extras["ref_revision_<target>_given_<given>"]  [k, T]  reference (cached once, as the reference column)

``target`` and ``given`` are ``chosen`` or ``rejected``; the ``chosen`` targets share the
``chosen_mask`` and the ``rejected`` targets the ``rejected_mask`` (the responses are the same tokens,
only the prompt before them differs). The loop never looks at the loss's name: it reads
``needs_revision_logprobs`` and ``revision_template`` (one packed forward pass per ``given``, so a
step costs three passes of the pairs instead of one).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from anypo.ops import zero_masked
from anypo.types import PreferenceBatch

__all__ = [
    "DEFAULT_REVISION_TEMPLATE",
    "SIDES",
    "check_revision_template",
    "revision_key",
    "revision_messages",
    "revision_ratios",
]

SIDES = ("chosen", "rejected")

DEFAULT_REVISION_TEMPLATE = "{prompt}\n\nHere is a previous answer:\n{response}\n\nWrite an improved answer."
"""The default revision prompt: ``{prompt}`` is the original user message, ``{response}`` the answer
to improve. Our wording (the SRPO paper's template could not be read); any template with both
placeholders works (``--algo.loss.revision-template``)."""


def revision_key(target: str, given: str, ref: bool = False) -> str:
    """The ``PreferenceBatch.extras`` key of ``log pi(y_target | R(x, y_given))`` (``ref``: the reference's)."""
    if target not in SIDES or given not in SIDES:
        raise ValueError(f"revision_key: target and given must be 'chosen' or 'rejected', got {target!r}, {given!r}")
    return f"{'ref_' if ref else ''}revision_{target}_given_{given}"


def check_revision_template(template: str, owner: str) -> None:
    """ValueError naming ``owner.revision_template`` unless it formats with exactly ``{prompt}`` and ``{response}``."""
    field = f"{owner}.revision_template"
    for name in ("{prompt}", "{response}"):
        if name not in template:
            raise ValueError(
                f"{field} must contain {name} (the original question and the answer to improve), got {template!r}"
            )
    try:
        template.format(prompt="", response="")
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(
            f"{field} has a placeholder other than {{prompt}} and {{response}} ({e}); write a literal brace as {{{{ or }}}}"
        ) from None


def revision_messages(messages: list[dict[str, Any]], response: str, template: str) -> list[dict[str, Any]]:
    """The revision prompt ``R(x, y)``: ``messages`` with the last user message's content replaced by
    ``template.format(prompt=<that content>, response=response)``; the system message and any earlier
    turns stay as they are.

    Raises:
        ValueError: ``messages`` has no user message.
    """
    out = [dict(m) for m in messages]
    for m in reversed(out):
        if m.get("role") == "user":
            m["content"] = template.format(prompt=m["content"], response=response)
            return out
    raise ValueError("a revision prompt needs a user message in the pair's prompt, found none")


def revision_ratios(batch: PreferenceBatch, like: Tensor) -> dict[tuple[str, str], Tensor]:
    """Per-pair revision log-ratios ``g(target | given) = sum_t m (lp - lp_ref)`` under ``R(x, y_given)``.

    Args:
        batch: masks and the eight ``extras`` of the module docstring.
        like: a tensor whose dtype the sums take (the policy log-probs').

    Returns:
        ``{(target, given): [N]}`` for the four combinations.

    Raises:
        ValueError: an entry is missing (naming ``needs_revision_logprobs``) or has the wrong shape.
    """
    out = {}
    for target in SIDES:
        mask = getattr(batch, f"{target}_mask")
        for given in SIDES:
            vals = []
            for ref in (False, True):
                key = revision_key(target, given, ref)
                v = batch.extras.get(key)
                if v is None:
                    raise ValueError(
                        f"PreferenceBatch.extras[{key!r}] is missing: this loss declares needs_revision_logprobs, "
                        "which the offline preference loop (anypo.train_pref) fills; compute the log-probs of both "
                        "responses after each revision prompt (anypo.losses.revision) when calling it directly"
                    )
                if tuple(v.shape) != tuple(mask.shape):
                    raise ValueError(
                        f"PreferenceBatch.extras[{key!r}] has shape {tuple(v.shape)}, {target}_mask {tuple(mask.shape)}"
                    )
                vals.append(zero_masked(v.to(like.dtype), mask))  # where(): padding gives neither nan nor gradient
            out[(target, given)] = (vals[0] - vals[1]).sum(-1)
    return out
