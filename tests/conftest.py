import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# --engine-precision auto (the default) samples in bfloat16 on AMX CPUs: the suite runs the float32
# engine on every machine (the bfloat16 engine has its own tests, which ask for it by name;
# ANYPO_NATIVE_BF16=1 pytest ... runs the suite as an AMX machine's default would)
os.environ.setdefault("ANYPO_NATIVE_BF16", "0")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tokenizer():
    from anypo.models import load_tokenizer

    return load_tokenizer("tiny")


@pytest.fixture(scope="session")
def tiny_model():
    from anypo.models import load_model

    return load_model("tiny", seed=0)
