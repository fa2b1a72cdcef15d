"""What the lmms-eval task families share: the row's image, answer parsing that does not penalise
harmless formatting ("Yes." is yes, "(a)" and "a) red" are A), and the share of records correct."""

from __future__ import annotations

import re


def doc_image(doc: dict) -> list:
    """The row's image, as lmms-eval's ``doc_to_visual`` returns it."""
    return [doc["image"].convert("RGB")]


def share_correct(results: list[dict]) -> float:
    """The share of records marked ``correct`` (0 for none)."""
    return sum(r["correct"] for r in results) / len(results) if results else 0.0


def option_letter(response: str, options: list[str]) -> str:
    """'A', '(a)', 'a) red', 'The answer is B', or an option's own text -> its letter; '' if none."""
    text = response.strip()
    letters = "".join(chr(65 + i) for i in range(len(options)))
    for pattern in (
        rf"^\(?([{letters}])\)?(?:[.):,\s]|$)",
        rf"answer is:?\s*\(?([{letters}])\)?\b",
        rf"option\s*\(?([{letters}])\)?\b",
    ):
        match = re.search(pattern, text, flags=re.IGNORECASE)
        if match:
            return match.group(1).upper()
    lowered = text.lower().rstrip(".! ")
    for i, option in enumerate(options):
        if lowered == option.lower().strip().rstrip("."):
            return chr(65 + i)
    return ""


def yes_no(response: str) -> str:
    """'Yes.', 'yes, there is' -> yes; 'No.', 'There is not' -> no (POPE's own rule past the first word)."""
    words = re.findall(r"[a-z']+", response.lower())
    if words and words[0] in ("yes", "no"):
        return words[0]
    return "no" if any(w in ("no", "not") or w.endswith("n't") for w in words) else "yes"


def parse_options(options: str) -> list[str]:
    """'(a) Open (b) Closed' -> ['Open', 'Closed']."""
    return [m.strip() for m in re.findall(r"\([a-z]\)\s*([^(]+?)(?=\s*\([a-z]\)|$)", options, flags=re.IGNORECASE)]
