"""Benchmarks: each module runs a candidate and its baseline side by side in one process and
writes `<name>.json` and `<name>.md` under the output folder (`make bench` -> reports/bench/).
Speed and memory targets are ratios against the baseline, never absolute timed tests."""
