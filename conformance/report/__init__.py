"""The conformance report: the HTML report, compare and merge of results.json.

Everything here only consumes recorded results, read through
`conformance.record.RunRecord.load` (the one typed, validated schema: SCHEMA.md):
statuses and verdicts are the pytest plugin's; nothing here decides pass or fail.
"""
