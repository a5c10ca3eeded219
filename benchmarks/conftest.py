import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def glyphs(tmp_path_factory):
    os.environ.setdefault("DFMLBENCH_CACHE", str(tmp_path_factory.mktemp("dfmlbench-cache")))
    from dfmlbench.data import load_dataset
    return load_dataset("glyphs")
