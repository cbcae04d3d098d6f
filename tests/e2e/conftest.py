import pytest

from tiny_runs import tiny_config


@pytest.fixture
def make_cfg(tmp_path):
    return lambda **kw: tiny_config(tmp_path, **kw)
