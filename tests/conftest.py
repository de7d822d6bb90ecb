"""Shared test settings: the hypothesis profiles the fuzz tests run under.

`ci` (the default) is derandomized, so CI runs the same examples every time and a failure
reproduces; `long` searches far more widely, for a session spent hunting:

    HYPOTHESIS_PROFILE=long python -m pytest tests/test_bank_hardening.py tests/test_plan_hardening.py
"""

import atexit
import os
import shutil
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

# Hypothesis keeps caches in ./.hypothesis; tests leave nothing in the checkout, so they go to a
# scratch folder removed when the run ends.
_HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="blockskip-hypothesis-")
atexit.register(shutil.rmtree, _HYPOTHESIS_HOME, ignore_errors=True)
set_hypothesis_home_dir(_HYPOTHESIS_HOME)

settings.register_profile("ci", max_examples=100, derandomize=True, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=5000, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
