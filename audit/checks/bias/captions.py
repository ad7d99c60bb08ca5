"""Caption figures: gendered and identity terms, occupations and their co-occurrence with gender.

Streaming: `CaptionCounter.add` takes captions part by part and keeps only counts, so memory
does not grow with the dataset. All intervals are percentile bootstrap 95% intervals over
captions, drawn as multinomial cell counts (see `stats`).

Co-occurrence is counted per caption: a caption "a female doctor and her dog" counts once
for (doctor, female). PMI = log(p(occupation and female) / (p(occupation) p(female))) in nats
over captions: 0 = as often as chance, > 0 = more often, < 0 = less often. PMI is omitted
(None, with `pmi_*_too_few`) below `stats.PMI_MIN_COUNT` co-occurrences; shares use Wilson
intervals (`stats.wilson`) and are flagged `too_few` below `stats.MIN_N` captions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np

from audit.checks.bias import stats
from audit.checks.bias.wordlists import Lexicon, lexicon

GROUPS = ("female", "male", "nonbinary")


def _fm_index(groups: set[str]) -> int:
    """Cell of a caption by (mentions female, mentions male): 0 none, 1 f, 2 m, 3 both."""
    return ("female" in groups) + 2 * ("male" in groups)


class CaptionCounter:
    """Accumulates caption counts; `result` turns them into figures with intervals."""

    def __init__(self, lex: Lexicon | None = None, pmi_min_count: int = stats.PMI_MIN_COUNT):
        self.lex = lex or lexicon()
        self.pmi_min_count = pmi_min_count
        self.n = 0  # captions with text
        self.empty = 0
        self.fm_cells = np.zeros(4, dtype=np.int64)  # over all captions
        self.group_counts: Counter[str] = Counter()
        self.term_counts: Counter[str] = Counter()
        self.identity_counts: Counter[str] = Counter()  # category -> captions
        self.identity_terms: Counter[tuple[str, str]] = Counter()
        self.occ_cells: dict[str, np.ndarray] = {}  # occupation -> fm cells among its captions

    def add(self, captions: Iterable[str | None]) -> None:
        for text in captions:
            if not text or not text.strip():
                self.empty += 1
                continue
            self.n += 1
            groups, terms, identity, occupations = self.lex.find(text)
            cell = _fm_index(groups)
            self.fm_cells[cell] += 1
            self.group_counts.update(groups)
            self.term_counts.update(terms)
            self.identity_counts.update({c for c, _ in identity})
            self.identity_terms.update(identity)
            for occ in occupations:
                cells = self.occ_cells.get(occ)
                if cells is None:
                    cells = self.occ_cells[occ] = np.zeros(4, dtype=np.int64)
                cells[cell] += 1

    # -- figures -----------------------------------------------------------------------------
    def result(self, reps: int, rng: np.random.Generator, top: int = 30) -> dict[str, Any]:
        n = self.n
        groups = {}
        for g in GROUPS:
            k = self.group_counts.get(g, 0)
            groups[g] = _share_figure(k, n, reps, rng)
        return {
            "captions": n,
            "empty_captions": self.empty,
            "gender": {
                "captions_with_term": groups,
                "female_to_male_ratio": self._ratio(reps, rng),
                "female_share_of_gendered": self._female_share(self.fm_cells, reps, rng),
                "terms": [
                    {"term": t, "group": self.lex.gender[t], **_share_figure(k, n, reps, rng)}
                    for t, k in self.term_counts.most_common(top)
                ],
            },
            "identity": {
                "categories": {
                    c: _share_figure(k, n, reps, rng)
                    for c, k in sorted(self.identity_counts.items())
                },
                "terms": [
                    {"category": c, "term": t, **_share_figure(k, n, reps, rng)}
                    for (c, t), k in self.identity_terms.most_common(top)
                ],
            },
            "occupations": self._occupations(reps, rng),
        }

    def _ratio(self, reps: int, rng: np.random.Generator) -> dict[str, Any]:
        f = self.fm_cells[1] + self.fm_cells[3]
        m = self.fm_cells[2] + self.fm_cells[3]
        value = float(f / m) if m else None
        ci = (
            stats.bootstrap_cells(
                self.fm_cells, lambda d: (d[:, 1] + d[:, 3]) / (d[:, 2] + d[:, 3]), reps, rng
            )
            if m
            else [None, None]
        )
        return {"value": value, "ci95": ci, "female_captions": int(f), "male_captions": int(m)}

    @staticmethod
    def _female_share(cells: np.ndarray, reps: int, rng: np.random.Generator) -> dict[str, Any]:
        """Female captions / (female + male captions); a caption with both counts on both sides."""
        f, m = int(cells[1] + cells[3]), int(cells[2] + cells[3])
        if f + m == 0:
            return {"value": None, "ci95": [None, None], "gendered_mentions": 0, "too_few": True}
        return {
            "value": f / (f + m),
            "ci95": stats.wilson(f, f + m),
            "gendered_mentions": f + m,
            "too_few": f + m < stats.MIN_N,
        }

    def _occupations(self, reps: int, rng: np.random.Generator) -> list[dict[str, Any]]:
        n, out = self.n, []
        for occ, cells in sorted(self.occ_cells.items(), key=lambda kv: (-kv[1].sum(), kv[0])):
            # 8 cells over all captions: (occupation present?) x (fm cell)
            joint = np.concatenate([cells, self.fm_cells - cells])
            n_o = int(cells.sum())
            n_of, n_om = int(cells[1] + cells[3]), int(cells[2] + cells[3])
            n_f = int(self.fm_cells[1] + self.fm_cells[3])
            n_m = int(self.fm_cells[2] + self.fm_cells[3])
            row = {
                "occupation": occ,
                "soc_group": self.lex.occupation_group.get(occ, ""),
                "captions": n_o,
                "share": n_o / n if n else None,
                "with_female": n_of,
                "with_male": n_om,
                "female_share_of_gendered": n_of / (n_of + n_om) if n_of + n_om else None,
                "female_share_ci95": stats.wilson(n_of, n_of + n_om),
                "too_few": n_of + n_om < stats.MIN_N,
                "pmi_female": stats.pmi(n_of, n_o, n_f, n),
                "pmi_male": stats.pmi(n_om, n_o, n_m, n),
                "pmi_female_too_few": n_of < self.pmi_min_count,
                "pmi_male_too_few": n_om < self.pmi_min_count,
            }
            for side in ("female", "male"):
                if row[f"pmi_{side}_too_few"]:
                    row[f"pmi_{side}"] = None
            if reps > 0 and n:
                draws = rng.multinomial(n, joint / n, size=reps).astype(float)
                o = draws[:, :4]
                d_o = o.sum(1)
                d_of, d_om = o[:, 1] + o[:, 3], o[:, 2] + o[:, 3]
                d_f = d_of + draws[:, 5] + draws[:, 7]
                d_m = d_om + draws[:, 6] + draws[:, 7]
                with np.errstate(divide="ignore", invalid="ignore"):
                    row["share_ci95"] = stats.wilson(n_o, n)
                    for side, d_xy, d_y in (("female", d_of, d_f), ("male", d_om, d_m)):
                        if not row[f"pmi_{side}_too_few"]:
                            row[f"pmi_{side}_ci95"] = stats.interval(
                                stats.pmi_array(d_xy, d_o, d_y, n)
                            )
            out.append(row)
        return out


def _share_figure(k: int, n: int, reps: int, rng: np.random.Generator) -> dict[str, Any]:
    """Share of captions with a term; Wilson interval (no resampling needed for a proportion)."""
    return {"captions": int(k), "share": stats.share(k, n), "ci95": stats.wilson(k, n)}
