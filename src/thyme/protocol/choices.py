"""Map a free-form answer to a multiple-choice option letter, or refuse when it is ambiguous.

Models answer MCQs as "B", "(B)", "B.", "B) red car", "Option B", or with the option's text itself. Scoring
must count these, and must not count an answer that names two options ("A or C") or contradicts itself
("B. blue" when B is "red" and another option is "blue"): those return None.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence

from thyme.protocol.answer import strip_answer_leadins

# "B", "(B)", "[B]", "B.", "B)", "B:", "Option B", "option (B)" at the start, then the rest.
_LETTER_RE = re.compile(
    r"(?:option\s+)?(?:\((?P<p>[A-Za-z])\)|\[(?P<b>[A-Za-z])\]|(?P<l>[A-Za-z])(?=[.:)\s]|$))[.:)]?",
    re.IGNORECASE | re.ASCII,
)
# After a letter: another letter joined by "or", "and", ",", "/" or "&" makes the answer name two options.
_MORE_LETTERS_RE = re.compile(r"\s*(?:,|/|&|\bor\b|\band\b)\s*\(?[A-Z]\b", re.ASCII)
_NON_WORD_RE = re.compile(r"[^\w]+")
_ARTICLE_RE = re.compile(r"^(?:a|an|the) ")


def normalize_options(options: Mapping[str, str] | Sequence[str]) -> dict[str, str]:
    """Options as {letter: text}: a sequence is lettered A, B, C...; mapping keys must be single letters."""
    if isinstance(options, Mapping):
        result = {}
        for key, text in options.items():
            letter = str(key).strip().upper()
            if len(letter) != 1 or letter not in string.ascii_uppercase:
                raise ValueError(f"option key {key!r} is not a single letter A-Z; key options by letter")
            result[letter] = str(text)
        return dict(sorted(result.items()))
    if len(options) > len(string.ascii_uppercase):
        raise ValueError(f"{len(options)} options given; at most 26 can be lettered A-Z")
    return {string.ascii_uppercase[i]: str(text) for i, text in enumerate(options)}


def _norm(text: str) -> str:
    return _NON_WORD_RE.sub(" ", text.casefold()).strip()


def extract_option_letter(answer: str, options: Mapping[str, str] | Sequence[str]) -> str | None:
    """The option letter an answer picks, or None when it picks none or is ambiguous."""
    opts = normalize_options(options)
    s = strip_answer_leadins(answer).strip()
    if not s:
        return None
    by_letter = _from_letter(s, opts)
    if by_letter is not None:
        return by_letter or None
    said = _norm(s)
    for candidate in (said, _ARTICLE_RE.sub("", said)):
        hits = [letter for letter, text in opts.items() if candidate and _norm(text) == candidate]
        if hits:
            return hits[0] if len(hits) == 1 else None
    return None


def _from_letter(s: str, opts: dict[str, str]) -> str | None:
    """Letter from an explicit marker: the letter, "" when the answer is ambiguous, None when no marker."""
    match = _LETTER_RE.match(s)
    if match is None:
        return None
    raw_letter = match.group("p") or match.group("b") or match.group("l")
    rest = s[match.end() :].strip()
    # A lower-case letter counts only as the whole answer ("b", "(b)"): in "a red car" it is an article.
    if raw_letter.islower() and rest:
        return None
    letter = raw_letter.upper()
    if letter not in opts:
        return None
    if _MORE_LETTERS_RE.match(s, match.end()):
        return ""  # "A or C", "A, B"
    if not rest:
        return letter
    said, own = _norm(rest), _norm(opts[letter])
    if said and own and (said in own or own in said):
        return letter
    punctuated = match.group("l") is None or match.group(0).endswith((".", ")", ":"))
    if not punctuated:
        return None  # "A cat": a capitalised article, not a marker; let the option texts decide
    if any(_norm(text) == said for other, text in opts.items() if other != letter):
        return ""  # "B. blue" where blue is another option's text: contradictory
    return letter  # "B. because it is taller"
