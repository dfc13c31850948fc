"""Constrained decoding on the real SmolLM2 model: constrained and unconstrained requests in one
continuous batch; the unconstrained ones keep their solo tokens exactly."""

import json

import pytest

from services.engine import SamplingParams
from services.engine.grammar import GrammarSpec

pytestmark = pytest.mark.slow

SCHEMA = json.dumps({"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                      "unit": {"enum": ["celsius", "fahrenheit"]}},
                     "required": ["city", "unit"], "additionalProperties": False})
QUESTIONS = ["What is the capital of France?", "Name three colors.", "What is 2+2?", "Say hello.",
             "Write a haiku about the sea.", "How many legs does a spider have?"]


def test_a_mixed_batch_leaves_unconstrained_rows_token_identical(engine):
    prompts = [engine.chat_prompt(q) for q in QUESTIONS]
    free = SamplingParams(max_tokens=24, temperature=0)
    bound = SamplingParams(max_tokens=40, temperature=0, grammar=GrammarSpec("json_schema", schema=SCHEMA))
    alone = [engine.generate([p], free)[0].token_ids for p in prompts[1::2]]
    mixed = engine.generate(prompts, [bound if i % 2 == 0 else free for i in range(len(prompts))])
    assert [c.token_ids for c in mixed[1::2]] == alone
    for c in mixed[0::2]:
        assert json.loads(c.text)["unit"] in ("celsius", "fahrenheit")
