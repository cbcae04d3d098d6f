"""``addition_proxy``: addition trained on a hackable proxy reward, with the true reward logged."""

from __future__ import annotations

from anypo.rewards.answer import MathAnswer
from anypo.rewards.proxy import ProxyAnswer
from anypo.tasks.arithmetic import AdditionTask
from anypo.types import PartConfig

__all__ = ["AdditionProxyTask"]


class AdditionProxyTask(AdditionTask):
    """``What is a + b?`` whose training reward is the lenient ``proxy_answer`` (the sum appears anywhere
    in the response), while the true reward, strict correctness (``math_answer``), is logged.

    For reward-hacking studies ("Correlated Proxies", https://arxiv.org/abs/2403.03185; the
    ``orpo_proxy`` preset). The default reward is ``math_answer`` with weight 0 followed by
    ``proxy_answer`` with weight 1: the loop trains on the proxy, logs the first term as
    ``reward/accuracy`` at every step (the true reward of the samples) and evaluates held-out pass@k
    with it, and ``reward/mean`` is the proxy.
    """

    def default_reward(self) -> tuple[tuple[PartConfig, float], ...]:
        return ((MathAnswer(number_only=True), 0.0), (ProxyAnswer(), 1.0))
