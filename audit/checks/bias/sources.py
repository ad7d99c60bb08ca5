"""Where the data comes from: hosts, registrable domains, TLD -> country, concentration, licences.

Registrable domain = the public suffix plus one label ("a.b.example.co.uk" -> "example.co.uk"),
from the Public Suffix List bundled with the `publicsuffixlist` package (offline; the list's
private section is included, so "alice.github.io" is its own domain, as browsers treat it).
An IP address is its own domain. A URL without a parseable host is counted as malformed.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from audit.checks.bias import stats
from audit.checks.bias.wordlists import cctld

MALFORMED = "(malformed)"
_HOST = re.compile(r"[\w-]+(\.[\w-]+)*")
# Above this many (reps x domains) the Gini interval uses fewer resamples; the json says so.
MAX_GINI_WORK = 20_000_000


@functools.lru_cache(maxsize=1)
def _psl() -> Any:
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList()


def host(url: str | None) -> str | None:
    """Lower-case host of an absolute URL, or None if it has none / is malformed."""
    if not url or not isinstance(url, str):
        return None
    try:
        parts = urlsplit(url.strip())
        h = parts.hostname
    except ValueError:
        return None
    if not h or parts.scheme.lower() not in ("http", "https", "ftp"):
        return None
    h = h.rstrip(".")
    if _is_ip(h):
        return h
    return h if _HOST.fullmatch(h) else None


def _is_ip(h: str) -> bool:
    try:
        ipaddress.ip_address(h)
    except ValueError:
        return False
    return True


def registrable_domain(h: str) -> str:
    """eTLD+1 of host `h`; an IP or a bare public suffix is returned unchanged."""
    if _is_ip(h):
        return h
    return _psl().privatesuffix(h) or h


def tld(h: str) -> str:
    """Top-level domain of a host, "(ip)" for addresses."""
    return "(ip)" if _is_ip(h) else h.rsplit(".", 1)[-1]


def country(tld_: str) -> tuple[str, str]:
    """(country or region, note) for a TLD; generic TLDs -> ("generic", "")."""
    if tld_ == "(ip)":
        return ("IP address", "")
    return cctld().get(tld_, ("generic or unknown TLD", ""))


class SourceCounter:
    """Counts hosts and licences part by part."""

    def __init__(self) -> None:
        self.hosts: Counter[str] = Counter()
        self.licenses: Counter[str] = Counter()
        self.rows = 0
        self.malformed = 0

    def add(self, urls: Iterable[str | None], licenses: Iterable[str | None] | None = None) -> None:
        for url in urls:
            self.rows += 1
            h = host(url)
            if h is None:
                self.malformed += 1
            else:
                self.hosts[h] += 1
        if licenses is not None:
            self.licenses.update(
                lic.strip() if lic and lic.strip() else "(none)" for lic in licenses
            )

    def result(self, reps: int, rng: np.random.Generator, top: int = 20) -> dict[str, Any]:
        domains: Counter[str] = Counter()
        tlds: Counter[str] = Counter()
        for h, k in self.hosts.items():
            domains[registrable_domain(h)] += k
            tlds[tld(h)] += k
        n = sum(domains.values())
        counts = np.array(sorted(domains.values(), reverse=True), dtype=np.int64)
        countries: Counter[str] = Counter()
        for t, k in tlds.items():
            countries[country(t)[0]] += k
        return {
            "rows": self.rows,
            "malformed_urls": self.malformed,
            "hosts": len(self.hosts),
            "domains": len(domains),
            "top_domains": [
                {
                    "domain": d,
                    "rows": k,
                    "share": k / n,
                    "ci95": stats.wilson(k, n),
                }
                for d, k in domains.most_common(top)
            ],
            "concentration": _concentration(counts, reps, rng),
            "tlds": [
                {
                    "tld": t,
                    "rows": k,
                    "share": k / n,
                    "country": country(t)[0],
                    "note": country(t)[1],
                }
                for t, k in tlds.most_common(top)
            ],
            "countries": [
                {"country": c, "rows": k, "share": k / n} for c, k in countries.most_common(top)
            ],
            "cctld_share": _cctld_share(tlds, n),
            "licenses": [
                {"license": lic, "rows": k, "share": k / self.rows if self.rows else None}
                for lic, k in self.licenses.most_common(top)
            ],
        }


def _cctld_share(tlds: Counter[str], n: int) -> dict[str, Any]:
    cc = sum(k for t, k in tlds.items() if t in cctld())
    generic_use = sum(k for t, k in tlds.items() if cctld().get(t, ("", ""))[1] == "generic-use")
    return {
        "rows_with_cctld": cc,
        "share": cc / n if n else None,
        "rows_with_generic_use_cctld": generic_use,
    }


def _concentration(counts: np.ndarray, reps: int, rng: np.random.Generator) -> dict[str, Any]:
    """Top-k shares and Gini of rows over registrable domains, with intervals; Lorenz points.

    Resamples are drawn in chunks so memory stays near 16 MB whatever the number of domains;
    with very many domains fewer resamples are drawn (recorded as `bootstrap_reps`).
    """
    n = int(counts.sum())
    if n == 0:
        return {"rows": 0}
    ks = (1, 10, 100)
    reps = min(reps, max(20, MAX_GINI_WORK // max(1, counts.size))) if reps > 0 else 0
    top = np.zeros((reps, len(ks)))
    gin = np.zeros(reps)
    chunk = max(1, 2_000_000 // counts.size)
    for start in range(0, reps, chunk):
        draws = rng.multinomial(n, counts / n, size=min(chunk, reps - start))
        # resampled top-k: sort each resample, since the top domains may change places
        ordered = -np.sort(-draws, axis=1)
        for j, k in enumerate(ks):
            top[start : start + len(draws), j] = ordered[:, :k].sum(1) / n
        gin[start : start + len(draws)] = stats.gini_rows(draws)
    out: dict[str, Any] = {"rows": n, "bootstrap_reps": reps}
    for j, k in enumerate(ks):
        out[f"top{k}_share"] = {
            "value": float(counts[:k].sum() / n),
            "ci95": stats.interval(top[:, j]) if reps else [None, None],
        }
    out["gini"] = {
        "value": stats.gini(counts),
        "ci95": stats.interval(gin) if reps else [None, None],
    }
    cum = np.cumsum(counts[::-1]) / n  # ascending order for a Lorenz curve
    idx = np.unique(np.linspace(0, counts.size - 1, min(200, counts.size)).astype(int))
    out["lorenz"] = {
        "domain_share": [float((i + 1) / counts.size) for i in idx],
        "row_share": [float(cum[i]) for i in idx],
    }
    return out
