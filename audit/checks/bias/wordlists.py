"""The documented word lists and the ccTLD table shipped in `audit/data/wordlists/`.

Each file is a small TSV whose `#` header cites where the list comes from and says what it
cannot tell; `audit/data/wordlists/README.md` describes them together. Lists are loaded once
per process and matched on whole lower-case tokens (see `tokens`).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.errors import AuditError

WORDLISTS = Path(__file__).resolve().parents[2] / "data" / "wordlists"
FILES = ("gender.tsv", "identity.tsv", "occupations.tsv", "cctld.tsv")

# Letters only: digits and punctuation split words; "non-binary" -> "non binary", "women's" ->
# "women s". Unicode letters count, so accented words stay whole.
_WORD = re.compile(r"[^\W\d_]+")


def tokens(text: str | None) -> list[str]:
    return _WORD.findall(text.lower()) if text else []


def read_tsv(name: str, columns: int) -> list[list[str]]:
    """Rows of a word-list file (header lines starting with '#' skipped)."""
    path = WORDLISTS / name
    if not path.exists():
        raise AuditError(
            f"word list {path} is missing; reinstall audit (it ships with the package)."
        )
    rows = []
    for lineno, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        cells = line.split("\t")
        if len(cells) < columns:
            raise AuditError(
                f"{path}:{lineno}: expected {columns} tab-separated columns, got {len(cells)}"
            )
        rows.append([c.strip() for c in cells])
    return rows


def plural(term: str) -> str:
    """English plural of the last word, enough for occupation titles ("-man" -> "-men")."""
    head, _, last = term.rpartition(" ")
    if last.endswith("man"):
        last = last[:-3] + "men"
    elif last.endswith("y") and len(last) > 1 and last[-2] not in "aeiou":
        last = last[:-1] + "ies"
    elif last.endswith(("s", "sh", "ch", "x", "z")):
        last = last + "es"
    else:
        last = last + "s"
    return f"{head} {last}" if head else last


@dataclass(frozen=True)
class Lexicon:
    gender: dict[str, str]  # surface term -> group (female | male | nonbinary)
    identity: dict[str, str]  # surface term -> category
    occupations: dict[str, str]  # surface term (singular or plural) -> canonical occupation
    occupation_group: dict[str, str]  # canonical occupation -> SOC major group
    max_words: int

    def find(self, text: str | None) -> tuple[set[str], set[str], set[tuple[str, str]], set[str]]:
        """(gender groups, gender terms, (identity category, term) pairs, occupations) in `text`."""
        words = tokens(text)
        grams = set(words)
        for n in range(2, self.max_words + 1):
            grams.update(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))
        gender_terms = {g for g in grams if g in self.gender}
        groups = {self.gender[g] for g in gender_terms}
        identity = {(self.identity[g], g) for g in grams if g in self.identity}
        occupations = {self.occupations[g] for g in grams if g in self.occupations}
        return groups, gender_terms, identity, occupations


@functools.lru_cache(maxsize=1)
def lexicon() -> Lexicon:
    gender = {t.lower(): g for t, g, *_ in read_tsv("gender.tsv", 2)}
    identity = {t.lower(): c for c, t, *_ in read_tsv("identity.tsv", 2)}
    occupations: dict[str, str] = {}
    groups: dict[str, str] = {}
    for term, group, *_ in read_tsv("occupations.tsv", 2):
        term = term.lower()
        groups[term] = group
        occupations[term] = term
        occupations.setdefault(plural(term), term)
    surface = list(gender) + list(identity) + list(occupations)
    return Lexicon(gender, identity, occupations, groups, max(len(s.split()) for s in surface))


@functools.lru_cache(maxsize=1)
def cctld() -> dict[str, tuple[str, str]]:
    """ccTLD -> (country or region, note); note is "generic-use" for TLDs sold worldwide."""
    return {
        tld.lower(): (country, note) for tld, country, note, *_ in _pad(read_tsv("cctld.tsv", 2))
    }


def _pad(rows: list[list[str]]) -> list[list[str]]:
    return [r + [""] * (3 - len(r)) for r in rows]


def describe() -> list[dict[str, Any]]:
    """Name, entries and first source line of each list, for the report's method section."""
    out = []
    for name in FILES:
        lines = (WORDLISTS / name).read_text("utf-8").splitlines()
        source = next((ln[1:].strip() for ln in lines if ln.startswith("# Cite:")), "")
        out.append(
            {
                "file": f"audit/data/wordlists/{name}",
                "entries": sum(1 for ln in lines if ln.strip() and not ln.startswith("#")),
                "source": source.removeprefix("Cite:").strip(),
            }
        )
    return out
