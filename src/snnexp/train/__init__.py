"""Running an experiment: build.py (a run from its config), epoch.py (one training epoch), evaluate.py (a test pass,
`snnexp eval`), loop.py (`fit`, the loop that ties them together), and beside them checkpoint.py, resume.py,
memory.py, diagnose.py, session.py and distributed.py."""
