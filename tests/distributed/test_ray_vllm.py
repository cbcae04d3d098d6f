"""vLLM in the rollout actors (``--engine vllm --dist.backend ray``) samples what vLLM samples in one process.

Runs only where both Ray and vLLM are installed (a ``.venv-vllm`` with the ray extra, docs/engines.md);
skipped elsewhere, CI included.

The embedded model (the tiny test model's head size is below what vLLM's CPU attention takes), seed 0,
2 steps of 2 prompts x 4 samples, top-p 0.9, once with ``anypo.train.train`` and once with one rollout
actor and one learner. Expected:

- the same completions and rewards at every step: vLLM seeds each prompt's samples from the call's
  seed, and the actor's copy holds the learner's weights after each update (synced through the
  actor's ``load_weights``, which now also reloads vLLM's copy);
- the learner recomputes the old log-probs (``rollout/engine_logprob_abs_diff`` is logged): with top-p
  vLLM returns log-probs of the truncated distribution, which the learners, holding no engine, learn
  from ``ActorsEngine.logprobs_exact``; the gap between vLLM's and the learner's log-probs is what a
  truncation to top-p 0.9 gives, so it is only checked to be finite and logged, not small;
- the same loss within float32 noise (rel 1e-4).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'anypo[ray]')")
pytest.importorskip("vllm", reason="vLLM is not installed (docs/engines.md: the vllm extra)")
pytestmark = [pytest.mark.distributed, pytest.mark.vllm]

sys.path.insert(0, str(Path(__file__).parent))
from dist_helpers import rows, single_and_ray, tiny_config  # noqa: E402

from anypo.config import DistConfig  # noqa: E402
from anypo.engines.base import SamplingConfig  # noqa: E402
from anypo.models import ModelConfig  # noqa: E402


def test_a_vllm_rollout_actor_samples_what_vllm_samples_in_one_process(tmp_path, ray_cluster):
    cfg = tiny_config(
        tmp_path / "single",
        model=ModelConfig(),
        engine="vllm",
        lr=1e-5,
        sampling=SamplingConfig(max_new_tokens=8, top_p=0.9),
        log_samples=8,
        save_every=2,
    )
    dist_cfg = DistConfig(backend="ray", rollout_workers=1, learners=1, timeout_s=600, object_store_mb=1024)
    single, dist = single_and_ray(cfg, tmp_path, dist_cfg)  # the same 16 completions and rewards
    s_rows, d_rows = rows(single, "metrics.jsonl"), rows(dist, "metrics.jsonl")
    for a, b in zip(s_rows, d_rows, strict=True):
        assert a["reward/mean"] == b["reward/mean"]
        assert b["loss/total"] == pytest.approx(a["loss/total"], rel=1e-4, abs=1e-6)
        assert "rollout/engine_logprob_abs_diff" in a and "rollout/engine_logprob_abs_diff" in b
        assert math.isfinite(b["rollout/engine_logprob_abs_diff"])
