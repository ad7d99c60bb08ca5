"""Results that one module writes and another reads, as small dataclasses with named fields.

A reader takes the fields it needs by name instead of searching a dict for keys that look
right; the on-disk JSON keeps the writer's key names, so files written before stay readable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# The experiment's per-duplication AUC keys: auc_x32_vs_heldout (and its _ci95).
_BY_COPIES = re.compile(r"auc_x(\d+)_vs_heldout")

Interval = tuple[float, float] | None


def _interval(v: Any) -> Interval:
    return (float(v[0]), float(v[1])) if isinstance(v, (list, tuple)) and len(v) == 2 else None


@dataclass(frozen=True)
class AUC:
    """A ROC AUC with its 95% bootstrap interval."""

    value: float
    ci95: Interval = None


@dataclass(frozen=True)
class MembershipInference:
    """Loss-based membership inference, as the memorisation experiment records it in
    `WS/memorisation/<name>/summary.json` under "membership_inference"."""

    members_vs_heldout: AUC
    members_vs_optedout: AUC | None = None
    by_copies: dict[int, AUC] = field(default_factory=dict)
    method: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MembershipInference:
        def auc(key: str) -> AUC | None:
            v = d.get(key)
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                return None
            return AUC(float(v), _interval(d.get(f"{key}_ci95")))

        heldout = auc("auc_members_vs_heldout")
        if heldout is None:
            raise ValueError("membership_inference has no auc_members_vs_heldout")
        copies = {}
        for key in d:
            m = _BY_COPIES.fullmatch(key)
            if m and (a := auc(key)) is not None:
                copies[int(m.group(1))] = a
        return cls(
            heldout,
            auc("auc_members_vs_optedout"),
            dict(sorted(copies.items(), reverse=True)),
            str(d.get("method", "")),
        )
