"""The conformance report: results.json (schema), the HTML report, compare and merge.

Everything here only consumes recorded results: statuses and verdicts come from
results.json, written by the pytest plugin; nothing here decides pass or fail.
"""
