"""``tandem bench``: a load generator and report for any OpenAI-compatible Chat Completions server.

A run, in order (``runner.run_bench``):

1. ``workload``: calibrate (random dataset: two one-token probes fit the server's prompt tokens
   per word), then draw the requests (``WorkloadRequest``) from the seed;
2. warm-up requests, sent and forgotten;
3. ``load``: the dispatcher releases each request at its arrival time (``arrival_offsets``) or
   when a concurrency slot frees;
4. ``client``: one streamed request → a ``RequestRecord`` (``record``) timing every content chunk;
   ``sse`` decodes the event stream;
5. ``metrics``: pure functions from records to ``BenchMetrics`` (the definitions are there);
6. ``report`` and ``plots``: the table, the JSON with every request, the PNGs.

``config`` holds the frozen configuration, ``result`` the ``BenchResult`` of a run, ``cli`` the
arguments. The shipped chat prompts are ``data/chat_prompts.jsonl`` (``{"prompt": ...}`` lines,
the format ``vllm bench serve --dataset-name custom`` reads too).
"""
