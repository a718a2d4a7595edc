"""Reports: the collector of results, summary.json, report.md and its plots."""
