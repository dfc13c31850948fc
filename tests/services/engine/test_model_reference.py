"""Our Llama runtime against transformers' LlamaForCausalLM loaded from the same GGUF, in fp32."""

import pytest
import torch

from services.engine.checkpoint import default_model_path
from services.engine.model_runner import ModelRunner
from services.engine.kv_cache import KVCache
from services.engine.scheduler import ScheduledSeq, SchedulerOutput
from services.engine.sequence import SamplingParams, Sequence

pytestmark = pytest.mark.slow

TEXTS = ["Hi", "What is the capital of France?",
         "Write a short story about a robot who learns to paint. " * 12]


@pytest.fixture(scope="module")
def reference():
    from transformers import LlamaForCausalLM

    path = default_model_path()
    model = LlamaForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="module")
def runner(engine):
    cache = KVCache(engine.model_config, num_blocks=64, block_size=16, dtype=torch.float32)
    return ModelRunner(engine.model, cache, torch.device("cpu"))


def prompts(engine):
    return [engine.chat_prompt(t) for t in TEXTS]


def test_prompt_lengths_cover_short_and_long(engine):
    lengths = [len(p) for p in prompts(engine)]
    assert min(lengths) < 40 and max(lengths) > 150


def test_prefill_logits_match_transformers(engine, reference, runner):
    for ids in prompts(engine):
        n = len(ids)
        with torch.no_grad():
            want = reference(torch.tensor([ids])).logits[0]
        seq = Sequence("r", ids[:n // 2], SamplingParams(), 1)
        seq.block_table = list(range(-(-n // 16)))
        # Whole first half as one prefill, then the rest as a chunk with cached context.
        _, got_a = runner.run(SchedulerOutput((ScheduledSeq(seq, 0, n // 2),)))
        seq.prompt_token_ids = ids
        _, got_b = runner.run(SchedulerOutput((ScheduledSeq(seq, n // 2, n - n // 2),)))
        torch.testing.assert_close(got_a[0], want[n // 2 - 1], atol=2e-3, rtol=1e-4)
        torch.testing.assert_close(got_b[0], want[n - 1], atol=2e-3, rtol=1e-4)


def test_decode_logits_match_transformers(engine, reference, runner):
    ids = prompts(engine)[1] + engine.tokenizer.encode(" The capital of France is Paris, a city")
    k = len(ids) - 10
    with torch.no_grad():
        want = reference(torch.tensor([ids])).logits[0]
    seq = Sequence("r", ids[:k], SamplingParams(), 20)
    seq.block_table = list(range(-(-len(ids) // 16)))
    runner.run(SchedulerOutput((ScheduledSeq(seq, 0, k),)))
    for pos in range(k, len(ids)):
        seq.output_token_ids.append(ids[pos])
        _, got = runner.run(SchedulerOutput((ScheduledSeq(seq, pos, 1),)))
        torch.testing.assert_close(got[0], want[pos], atol=2e-3, rtol=1e-4)
