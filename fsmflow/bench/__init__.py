"""``fsmflow bench``: fsmflow against a hand-rolled baseline, measured in the same run.

Imported only when the benchmark runs (the CLI registers the command without it).
"""
