"""The model runner's step tensors, built from hand-made sequences; a recording fake stands in for the model."""

import torch

from services.engine.config import ModelConfig
from services.engine.kv_cache import KVCache
from services.engine.model_runner import ModelRunner, group_by_context
from services.engine.scheduler import ScheduledSeq, SchedulerOutput
from services.engine.sequence import SamplingParams, Sequence

MODEL = ModelConfig(vocab_size=1000, hidden_size=8, intermediate_size=16, num_layers=1, num_heads=2,
                    num_kv_heads=1, head_dim=4, rope_theta=1e4, rms_norm_eps=1e-5,
                    max_position_embeddings=1024, tie_word_embeddings=True)


class RecordingModel:
    """Returns each token's position as its hidden state and logits, and keeps what it was given."""

    def __call__(self, ids, positions, cache, meta):
        self.ids, self.positions, self.meta = ids.tolist(), positions.tolist(), meta
        return positions.float()[:, None]

    def logits(self, hidden):
        return hidden


def seq(rid: str, prompt: int, block_table: list[int], output: int = 0) -> Sequence:
    s = Sequence(rid, [100 * (ord(rid) - 96) + i for i in range(prompt)], SamplingParams(), 50)
    s.output_token_ids = [900 + i for i in range(output)]
    s.block_table = block_table
    return s


def run(block_size: int, num_blocks: int, scheduled: list[ScheduledSeq]):
    model = RecordingModel()
    sampled, logits = ModelRunner(model, KVCache(MODEL, num_blocks, block_size, torch.float32), "cpu").run(
        SchedulerOutput(tuple(scheduled)))
    return model, sampled, logits


def slots(table: list[int], start: int, end: int, bs: int = 4) -> list[int]:
    return [table[p // bs] * bs + p % bs for p in range(start, end)]


def test_decode_rows_come_first_longest_context_first_then_prefill_chunks_in_batch_order():
    whole = seq("a", 6, [3, 5])                     # prefill of the whole 6-token prompt
    short = seq("b", 5, [1, 2], output=1)           # decode: context 6
    chunk = seq("d", 10, [7, 8, 9])                 # tokens 4..8 of 10, 4 already cached: no sample
    long_ = seq("c", 9, [0, 4, 6], output=1)        # decode: context 10
    model, sampled, logits = run(4, 10, [ScheduledSeq(whole, 0, 6), ScheduledSeq(short, 5, 1),
                                         ScheduledSeq(chunk, 4, 4), ScheduledSeq(long_, 9, 1)])
    assert model.ids == [900, 900] + whole.prompt_token_ids + chunk.prompt_token_ids[4:8]
    assert model.positions == [9, 5, 0, 1, 2, 3, 4, 5, 4, 5, 6, 7]
    assert model.meta.slot_mapping.tolist() == (slots([0, 4, 6], 9, 10) + slots([1, 2], 5, 6)
                                                + slots([3, 5], 0, 6) + slots([7, 8, 9], 4, 8))
    assert [s.seq.request_id for s in sampled] == ["c", "b", "a"]
    assert logits[:, 0].tolist() == [9, 5, 5]       # each sampled row is its chunk's last token


def test_decode_group_pads_block_tables_to_the_longest_and_masks_past_each_context():
    long_, short = seq("c", 9, [0, 4, 6], output=1), seq("b", 5, [1, 2], output=1)
    model, _, _ = run(4, 10, [ScheduledSeq(short, 5, 1), ScheduledSeq(long_, 9, 1)])
    (group,) = model.meta.decode_groups
    assert (group.start, group.end) == (0, 2)
    assert group.blocks.tolist() == [[0, 4, 6], [1, 2, 0]]
    assert group.mask.shape == (2, 1, 1, 12) and group.mask.dtype == torch.float32   # the cache's dtype
    real = group.mask == 0
    assert real[:, 0, 0].sum(dim=1).tolist() == [10, 6]
    assert real[1, 0, 0, :6].all() and (group.mask[1, 0, 0, 6:] == float("-inf")).all()


def test_a_decode_group_whose_contexts_fill_their_blocks_needs_no_mask():
    model, _, _ = run(4, 4, [ScheduledSeq(seq("a", 7, [0, 1], output=1), 7, 1),
                             ScheduledSeq(seq("b", 7, [2, 3], output=1), 7, 1)])
    assert model.meta.decode_groups[0].mask is None


def test_prefill_spans_carry_context_slots_only_when_earlier_tokens_are_cached():
    whole, chunk = seq("a", 6, [3, 5]), seq("d", 10, [7, 8, 9])
    model, _, _ = run(4, 10, [ScheduledSeq(whole, 0, 6), ScheduledSeq(chunk, 4, 4)])
    first, second = model.meta.prefills
    assert (first.start, first.length, first.context_len, first.context_slots) == (0, 6, 6, None)
    assert (second.start, second.length, second.context_len) == (6, 4, 8)
    assert second.context_slots.tolist() == slots([7, 8, 9], 0, 8)
    assert model.meta.decode_groups == ()


def test_a_long_context_gets_a_decode_group_of_its_own():
    """600 vs 10 tokens of context: padding the two short rows would waste 2 x 590 slots (> 512)."""
    long_ = seq("a", 599, list(range(38)), output=1)
    shorts = [seq(r, 9, [38 + i], output=1) for i, r in enumerate("bc")]
    model, _, _ = run(16, 40, [ScheduledSeq(s, 9, 1) for s in shorts] + [ScheduledSeq(long_, 599, 1)])
    groups = model.meta.decode_groups
    assert [(g.start, g.end) for g in groups] == [(0, 1), (1, 3)]
    assert groups[0].blocks.shape == (1, 38) and groups[1].blocks.tolist() == [[38], [39]]


def test_group_by_context_splits_where_the_padding_saved_reaches_the_threshold():
    assert group_by_context([]) == []
    assert group_by_context([50]) == [(0, 1)]
    assert group_by_context([50, 49, 48, 40]) == [(0, 4)]               # a little padding: one group
    assert group_by_context([900, 60, 50, 40]) == [(0, 1), (1, 4)]      # one long context alone
    assert group_by_context([900, 880, 300, 290, 40, 40], min_saving=512) == [(0, 2), (2, 4), (4, 6)]
    assert group_by_context([1000, 990, 100, 90, 10], min_saving=512) == [(0, 2), (2, 5)]
    assert group_by_context([1000, 990, 100, 90, 10], min_saving=80) == [(0, 2), (2, 4), (4, 5)]
    assert group_by_context([30, 20, 10], min_saving=10 ** 6) == [(0, 3)]
