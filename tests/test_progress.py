"""Progress bars count the user's units (images, rows), with a rate and time remaining."""

from __future__ import annotations

from audit import progress


def test_bar_counts_units_not_chunks(monkeypatch, capsys):
    monkeypatch.setattr(progress, "enabled", lambda: True)
    chunks = [list(range(100)), list(range(100)), list(range(56))]  # 3 chunks, 256 images
    seen = list(progress.track(chunks, total=256, description="hashing", unit="images", weight=len))
    assert seen == chunks  # the items themselves pass through unchanged
    err = capsys.readouterr().err
    assert "hashing" in err and "256/256 images" in err and "3/3" not in err
    assert "images/s" in err and "eta" in err


def test_unknown_total_still_counts(monkeypatch, capsys):
    monkeypatch.setattr(progress, "enabled", lambda: True)
    list(progress.track(iter([[1, 2], [3]]), description="ingest", unit="rows", weight=len))
    assert "3/? rows" in capsys.readouterr().err


def test_quiet_when_not_a_terminal(capsys):
    assert list(progress.track([1, 2], total=2, unit="rows")) == [1, 2]
    assert capsys.readouterr().err == ""
