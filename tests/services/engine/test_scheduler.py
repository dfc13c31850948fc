"""Scheduler logic on hand-made sequences: no model involved."""

from services.engine.block_manager import BlockManager
from services.engine.config import EngineConfig
from services.engine.scheduler import Scheduler
from services.engine.sequence import SamplingParams, Sequence, SequenceStatus


def make(num_blocks=100, block_size=4, **cfg):
    config = EngineConfig(block_size=block_size, **cfg)
    return Scheduler(config, BlockManager(num_blocks, block_size))


def seq(rid, n_prompt, max_tokens=10):
    return Sequence(rid, list(range(1, n_prompt + 1)), SamplingParams(), max_tokens)


def complete_step(sched, out, token=7):
    """Pretend the model ran: mark tokens computed, append a token where one is sampled."""
    for s in out.scheduled:
        s.seq.num_computed_tokens = s.start + s.num_tokens
        if s.samples:
            s.seq.record_token(token, 0.0)


def test_whole_prompts_then_one_token_each():
    sched = make()
    a, b = seq("a", 5), seq("b", 3)
    sched.add(a)
    sched.add(b)
    out = sched.schedule()
    assert [(s.seq.request_id, s.start, s.num_tokens, s.samples) for s in out.scheduled] == [
        ("a", 0, 5, True), ("b", 0, 3, True)]
    complete_step(sched, out)
    out = sched.schedule()
    assert [(s.seq.request_id, s.start, s.num_tokens) for s in out.scheduled] == [("a", 5, 1), ("b", 3, 1)]


def test_token_budget_chunks_a_long_prompt():
    sched = make(max_num_batched_tokens=4)
    a = seq("a", 10)
    sched.add(a)
    chunks = []
    while not a.output_token_ids:
        out = sched.schedule()
        chunks.append([(s.start, s.num_tokens, s.samples) for s in out.scheduled])
        complete_step(sched, out)
    assert chunks == [[(0, 4, False)], [(4, 4, False)], [(8, 2, True)]]


def test_decodes_go_first_and_a_new_prompt_fills_the_budget():
    sched = make(max_num_batched_tokens=6)
    a = seq("a", 4)
    sched.add(a)
    complete_step(sched, sched.schedule())
    b = seq("b", 8)
    sched.add(b)
    out = sched.schedule()
    assert [(s.seq.request_id, s.num_tokens) for s in out.scheduled] == [("a", 1), ("b", 5)]


def test_max_num_seqs_limits_running():
    sched = make(max_num_seqs=2)
    for r in "abc":
        sched.add(seq(r, 2))
    out = sched.schedule()
    assert [s.seq.request_id for s in out.scheduled] == ["a", "b"]
    assert [s.request_id for s in sched.waiting] == ["c"]


def test_request_that_does_not_fit_now_waits_and_later_runs():
    sched = make(num_blocks=3, block_size=4)
    a, b = seq("a", 8), seq("b", 8)   # 2 blocks each, 3 in the cache
    sched.add(a)
    sched.add(b)
    out = sched.schedule()
    assert [s.seq.request_id for s in out.scheduled] == ["a"]
    assert b.status is SequenceStatus.WAITING
    sched.finish(a, "stop")
    assert sched.blocks.num_free == 3
    out = sched.schedule()
    assert [s.seq.request_id for s in out.scheduled] == ["b"]


def test_preemption_frees_the_newest_and_recomputes_it():
    sched = make(num_blocks=4, block_size=4)
    a, b = seq("a", 8), seq("b", 8)   # both fit exactly (4 blocks), neither can grow
    sched.add(a)
    sched.add(b)
    complete_step(sched, sched.schedule())
    out = sched.schedule()            # a needs a 3rd block -> b is preempted
    assert [s.seq.request_id for s in out.scheduled] == ["a"]
    assert b.status is SequenceStatus.WAITING and b.block_table == [] and b.num_computed_tokens == 0
    assert b.num_preemptions == 1 and sched.waiting[0] is b
    sched.finish(a, "stop")
    out = sched.schedule()            # b recomputes prompt + its sampled token, then samples again
    assert [(s.seq.request_id, s.start, s.num_tokens, s.samples) for s in out.scheduled] == [
        ("b", 0, 9, True)]


def test_finish_and_abort_from_any_state_return_blocks():
    sched = make(num_blocks=10)
    a, b = seq("a", 8), seq("b", 8)
    sched.add(a)
    sched.add(b)
    sched.schedule()
    c = seq("c", 4)
    sched.add(c)
    sched.finish(c, "abort")          # waiting
    sched.finish(a, "abort")          # running
    sched.finish(b, "stop")
    assert sched.blocks.num_free == 10 and not sched.has_unfinished()
