"""Hypothesis profiles: 'ci' (default, fast and deterministic) and 'thorough' (many more examples).

Select with HYPOTHESIS_PROFILE=thorough pytest.
"""
import os

import torch

from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=25, derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", max_examples=400, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The suite's models are tiny: on a 2-core machine intra-op threads only contend (a 784-300-100
# MLP backward measured 2 ms on 1 thread vs 60 ms on 2 busy threads). Override with TWINSPARSE_TEST_THREADS.
torch.set_num_threads(int(os.environ.get("TWINSPARSE_TEST_THREADS", "1")))
