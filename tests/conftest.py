"""Suite-wide settings: one torch thread per process.

The tests start gateways and vendors in threads and subprocesses beside pytest itself; with
torch's default of one thread per core, several processes spin on the same two cores and a
16² test model's 10 steps took 12 s instead of 50 ms. One thread each (inherited by subprocesses
through OMP_NUM_THREADS) keeps every process fast and the timings the tests rely on sane.
ZIPGATE_TEST_TORCH_THREADS=N runs the suite with N threads instead, to check that no numerical
comparison depends on the thread count (tests/fp_tolerance.py).
"""

from __future__ import annotations

import os

TEST_TORCH_THREADS = int(os.environ.get("ZIPGATE_TEST_TORCH_THREADS", "1"))
os.environ["OMP_NUM_THREADS"] = str(TEST_TORCH_THREADS)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402  (after OMP_NUM_THREADS, which torch reads when it loads)

torch.set_num_threads(TEST_TORCH_THREADS)
