"""Find the final answer in a model's response, and read numbers the way people write them.

Rules, in order (documented in ``docs/rewards.md``):

1. Explicit markers: ``\\boxed{...}`` (nested braces), ``<answer>...</answer>``, a line
   ``Answer: ...`` (also ``**Answer:**``, ``Final answer:``) and ``the answer is ...``. When several
   markers occur, the one that starts **last** in the text wins: it is the final answer.
2. Fallback (optional): the last number in the whole text.

The answer string is then cleaned: surrounding ``$``, ``\\(...\\)``, markdown ``**``, quotes, a
trailing period and a leftover ``</answer>`` are removed.

Numbers (:func:`parse_number`) accept a unicode minus (``−``, with or without a space), thousands
commas (``1,234``; LaTeX ``1{,}234``), decimals (``12.0`` equals ``12``), ``a/b`` and
``\\frac{a}{b}`` (also ``\\dfrac``/``\\tfrac``), and are returned as exact ``Fraction`` values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

__all__ = [
    "Extracted",
    "answer_number",
    "extract_answer",
    "find_answer",
    "find_markers",
    "last_number",
    "normalize_text",
    "parse_number",
]

Fallback = Literal["last_number", "none"]

# Characters models use for minus; all become ASCII "-".
_MINUS = str.maketrans({"\u2212": "-", "\ufe63": "-", "\uff0d": "-"})
# A plain number: thousands groups or digits, optional decimals, or a bare ".5".
_NUM = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+"
_SIGNED_NUM = re.compile(rf"(-\s?)?({_NUM})")
_SIGNED_FRAC_OR_NUM = re.compile(rf"(-\s?)?({_NUM})(?:\s*/\s*(\d+))?")
_FULL_NUMBER = re.compile(rf"[+-]?(?:{_NUM})")
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*(-?[\d.,]+)\s*\}\s*\{\s*(-?[\d.,]+)\s*\}")
_LATEX_FRAC_SHORT = re.compile(r"\\[dt]?frac(\d)(\d)")
_ANSWER_LINE = re.compile(
    r"\banswer\s*\**\s*[:\uff1a]\s*\**[ \t]*(.*)|\banswer\s+is\s*\**\s*[:\uff1a]?\**[ \t]*(.*)",
    re.IGNORECASE,
)
_TAGS = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.IGNORECASE | re.DOTALL)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_TEXT_CMD = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")


@dataclass(frozen=True)
class Extracted:
    """An answer found in a response.

    Attributes:
        text: the cleaned answer string.
        kind: which rule found it: ``"boxed"``, ``"tags"``, ``"answer"`` or ``"last_number"``.
        start: character offset of the marker in the response.
    """

    text: str
    kind: str
    start: int


def normalize_text(text: str) -> str:
    """Unicode minus signs to ``-``, LaTeX ``{,}`` to ``,`` and ``\\!``/``\\,`` spaces removed."""
    text = text.translate(_MINUS)
    return text.replace("{,}", ",").replace("\\!", "").replace("\\,", "")


def _boxed_spans(text: str) -> list[tuple[int, str]]:
    """``(start, content)`` of every ``\\boxed{...}``, matching nested braces."""
    out = []
    for m in _BOXED.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:  # an unclosed box (truncated response) is no answer
            out.append((m.start(), text[m.end() : i - 1]))
    return out


def _clean(answer: str) -> str:
    """Strip the decorations models put around an answer."""
    s = answer.split("</answer>")[0].split("</")[0]
    s = re.sub(r"^-\s+(?=[\d.\\])", "-", _TEXT_CMD.sub(r"\1", s).strip())
    for _ in range(3):  # decorations nest: **$42$.**
        s = s.strip().strip("*_`'\"").strip()
        s = s.rstrip(".;,:!").strip()
        if s.startswith("$") and s.endswith("$"):
            s = s.strip("$")
        for left, right in (("\\(", "\\)"), ("\\[", "\\]")):
            if s.startswith(left) and s.endswith(right):
                s = s[len(left) : -len(right)]
    return s.strip()


def find_markers(text: str) -> list[Extracted]:
    """Every explicitly marked answer of ``text`` with non-empty content, in no particular order."""
    text = normalize_text(text)
    out = [Extracted(_clean(c), "boxed", start) for start, c in _boxed_spans(text)]
    out += [Extracted(_clean(m.group(1)), "tags", m.start()) for m in _TAGS.finditer(text)]
    for m in _ANSWER_LINE.finditer(text):
        rest = m.group(1) if m.group(1) is not None else m.group(2)
        cleaned = _clean(rest)
        if not cleaned:  # "Answer:" alone on its line: the answer is on the next non-empty line
            following = [line for line in text[m.end() :].splitlines() if line.strip()]
            cleaned = _clean(following[0]) if following else ""
        out.append(Extracted(cleaned, "answer", m.start()))
    return [c for c in out if c.text]


def find_answer(text: str, fallback: Fallback = "last_number") -> Extracted | None:
    """The final answer of ``text`` and the rule that found it.

    Args:
        text: the model's response.
        fallback: ``"last_number"`` returns the last number of the text when no marker is present;
            ``"none"`` returns None then.

    Returns:
        The answer, or None when nothing was found.
    """
    candidates = find_markers(text)
    if candidates:
        return max(candidates, key=lambda c: c.start)  # the last marker is the final answer
    if fallback == "last_number":
        numbers = _numbers(text, with_fractions=True)
        if numbers:
            start, number = numbers[-1]
            return Extracted(number, "last_number", start)
    return None


def extract_answer(text: str, fallback: Fallback = "last_number") -> str | None:
    """The cleaned final answer string of ``text`` (see :func:`find_answer`)."""
    found = find_answer(text, fallback)
    return None if found is None else found.text


def _is_binary_minus(text: str, sign_start: int) -> bool:
    """True when the ``-`` at ``sign_start`` follows an operand (``5 - 3``, ``x - 3``, ``(a) - 3``)
    rather than a word or an operator (``is -3``, ``= -3``), i.e. is not a sign."""
    before = text[:sign_start].rstrip()
    if not before:
        return False
    if before[-1].isdigit() or before[-1] in ")]}":
        return True
    word = re.search(r"[A-Za-z]+$", before)
    return word is not None and len(word.group(0)) == 1  # a one-letter variable, not a word


def _numbers(text: str, with_fractions: bool = False) -> list[tuple[int, str]]:
    """``(start, number)`` for every number of ``text``, normalised (``-1234``, ``0.5``, ``3/4``).

    Offsets refer to ``text`` after LaTeX fractions were rewritten as ``a/b``.
    """
    text = _LATEX_FRAC.sub(r"\1/\2", _LATEX_FRAC_SHORT.sub(r"\1/\2", normalize_text(text)))
    pattern = _SIGNED_FRAC_OR_NUM if with_fractions else _SIGNED_NUM
    out = []
    for m in pattern.finditer(text):
        sign = m.group(1) is not None and not _is_binary_minus(text, m.start())
        body = m.group(2).replace(",", "")
        if with_fractions and m.group(3) is not None:
            body = f"{body}/{m.group(3)}"
        out.append((m.start(), ("-" if sign else "") + body))
    return out


def last_number(text: str) -> str | None:
    """The last number of ``text``, normalised (``"−1,234."`` -> ``"-1234"``, ``"\\frac{1}{2}"`` ->
    ``"1/2"``); None if none."""
    numbers = _numbers(text, with_fractions=True)
    return numbers[-1][1] if numbers else None


def parse_number(text: str) -> Fraction | None:
    """The exact value of ``text`` when the whole string is one number, else None.

    Accepts ``-42``, ``− 42``, ``1,234``, ``12.0``, ``.5``, ``3/4``, ``\\frac{3}{4}``,
    ``-\\frac{3}{4}``, ``$42$`` and ``42.`` (trailing period).
    """
    s = _clean(normalize_text(text))
    s = _LATEX_FRAC_SHORT.sub(r"\1/\2", s)
    s = _LATEX_FRAC.sub(r"(\1)/(\2)", s)
    s = re.sub(r"\s*/\s*", "/", re.sub(r"^-\s+", "-", s))
    s = s.replace("(", "").replace(")", "") if s.count("(") == s.count(")") <= 2 else s
    parts = s.split("/")
    if len(parts) > 2 or not all(_FULL_NUMBER.fullmatch(p) for p in parts):
        return None
    values = [Fraction(p.replace(",", "")) for p in parts]
    if len(values) == 2:
        if values[1] == 0:
            return None
        return values[0] / values[1]
    return values[0]


def answer_number(answer: str) -> Fraction | None:
    """The number an extracted answer states, reading the final value of a worked line.

    The whole string if it is a number; else, after the last ``=`` (``23 + 45 = 68`` -> 68), the
    first number (``68 apples`` -> 68, ``1/2 of it`` -> 1/2).
    """
    whole = parse_number(answer)
    if whole is not None:
        return whole
    tail = normalize_text(answer).rsplit("=", 1)[-1]
    numbers = _numbers(tail, with_fractions=True)
    return parse_number(numbers[0][1]) if numbers else None
