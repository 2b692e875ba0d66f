"""e2e tests start the planes as subprocesses (the procs fixture is in tests/conftest.py)."""
