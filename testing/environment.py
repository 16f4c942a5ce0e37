"""A pytest plugin, loaded early (`-p testing.environment` in pytest.ini), before Django reads
its settings: the test run is a development run.

The settings default to production (DEBUG off, a secret key required); the tests, and the
workers and servers they start (which inherit this environment), opt in to development unless
a test says otherwise (the deployment tests pass DJANGO_DEBUG=0 to the processes they start).
"""
from __future__ import annotations

import os

os.environ.setdefault("DJANGO_DEBUG", "1")
# Off unless a test turns it on (`judge=True`, training/tests/test_judge.py): with a model endpoint
# set (the fake), new jobs would judge by default, and the other tests count one call per reply.
os.environ.setdefault("MASSCER_JUDGE_DEFAULT", "0")
