"""Reward parts (registry kind ``reward``) and their combination.

A registered reward is ``fn(sample: Sample, cfg) -> float | RewardResult`` with a frozen config
dataclass. ``combine`` turns configs, names, user functions (``fn(sample)``) and weights into one
:class:`RewardRunner` that never raises (but for a ``UserError``). Importing this package registers
every built-in part:

| name | config | what |
| --- | --- | --- |
| ``math_answer`` | ``MathAnswer`` | final answer equals the reference (numbers, then math-verify) |
| ``exact_match`` | ``ExactMatch`` | final answer equals the reference as a normalised string |
| ``format`` | ``Format`` | the final answer is given with an explicit marker |
| ``countdown`` | ``Countdown`` | the answer expression solves the countdown puzzle |
| ``overlong`` | ``Overlong`` | DAPO soft overlong punishment |
| ``proxy_answer`` | ``ProxyAnswer`` | a hackable proxy: the reference number appears anywhere |
| ``reasoning_gym`` | ``ReasoningGym`` | the reasoning-gym generator's own score |
| ``vader_sentiment`` | ``VaderSentiment`` | VADER compound sentiment in [-1, 1] (a hackable lexical judge; extra ``judges``) |
| ``non_toxicity`` | ``NonToxicity`` | 1 - P(offensive) from alt-profanity-check (a hackable lexical judge; extra ``judges``) |
"""

from anypo.rewards.answer import ExactMatch, Format, MathAnswer, answers_match, exact_match, format_reward, math_answer
from anypo.rewards.combine import BatchRewards, RewardRunner, RewardTerm, combine, load_reward_fn
from anypo.rewards.countdown import Countdown, CountdownCheck, check_countdown, countdown, evaluate_expression
from anypo.rewards.extract import answer_number, extract_answer, find_answer, last_number, parse_number
from anypo.rewards.lexical import NonToxicity, VaderSentiment, non_toxicity, vader_sentiment
from anypo.rewards.proxy import ProxyAnswer, proxy_answer
from anypo.rewards.rgym import ReasoningGym, reasoning_gym_reward
from anypo.rewards.shaping import Overlong, overlong

__all__ = [
    "BatchRewards",
    "Countdown",
    "CountdownCheck",
    "ExactMatch",
    "Format",
    "MathAnswer",
    "NonToxicity",
    "Overlong",
    "ProxyAnswer",
    "ReasoningGym",
    "RewardRunner",
    "RewardTerm",
    "VaderSentiment",
    "answer_number",
    "answers_match",
    "check_countdown",
    "combine",
    "countdown",
    "evaluate_expression",
    "exact_match",
    "extract_answer",
    "find_answer",
    "format_reward",
    "last_number",
    "load_reward_fn",
    "math_answer",
    "non_toxicity",
    "overlong",
    "parse_number",
    "proxy_answer",
    "reasoning_gym_reward",
    "vader_sentiment",
]
