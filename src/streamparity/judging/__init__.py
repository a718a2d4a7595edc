"""Judging: verdicts, metrics, contract invariants, chunk judging, run-level gates, stability, the wording
of failures."""
