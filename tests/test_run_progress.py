"""`audit run` says which stage is running and how long the whole run has left."""

from __future__ import annotations

from audit.pipeline import RunOptions, StageResult, _time_left
from audit.results import Summary, TrainSummary


def test_time_left_is_the_training_budget_plus_measured_stage_times():
    options = RunOptions(train_minutes=10, generate=64)
    names = ["bias", "train", "generate", "match", "card"]
    # Before anything ran: the budget, plus a guess for the others and for sampling.
    assert _time_left(names, [], options) == ", about 12.1 min left in the run"
    done = [StageResult("ingest", Summary(), 3.0), StageResult("hash", Summary(), 5.0)]
    # Quick stages take their measured mean (4 s); sampling 10% of the budget until trained.
    assert (
        _time_left(names, done, options)
        == f", about {(600 + 60 + 60 + 3 * 4) / 60:.1f} min left in the run"
    )
    trained = [*done, StageResult("train", TrainSummary(steps_per_s=1.5), 620.0)]
    # After training, sampling 64 images is costed from the measured rate (30 steps' worth).
    assert _time_left(["generate", "match", "card"], trained, options) == (
        f", about {(30 / 1.5 + 2 * 4) / 60:.1f} min left in the run"
    )
    # By steps, the rate is unknown before training: say nothing rather than guess.
    assert _time_left(names, done, RunOptions(train_steps=100)) == ""
