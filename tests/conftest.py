import os
import tempfile

import pytest
import torch

# Tests run side by side on 2 cores; one thread each keeps timings predictable.
torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# latency tables are cached on disk; tests must not read or fill the user's cache
os.environ.setdefault("PRUNEKIT_CACHE", tempfile.mkdtemp(prefix="prunekit-test-cache-"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
