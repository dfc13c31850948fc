"""KV handoff from a prefill worker to a decode worker over torch.distributed point-to-point.

Every pair is a 2-rank group of its own, made on demand: rank 0 is the prefill worker (sender),
rank 1 the decode worker (receiver). There is no ``init_process_group`` and no static world, so a
decode worker started later pairs with prefill workers that are already running, and one prefill
worker holds one channel per decode worker. The backend follows the KV's device: gloo for CPU
tensors, NCCL for CUDA; the code after building the group is the same for both.

Pairing and one transfer, driven by the decode worker (gRPC calls are the workers' business):

    decode worker (rank 1)                                  prefill worker (rank 0)
      | KvStoreServer(host, port=0): hosts the TCPStore           |
      | connect(key, rank=1), in a thread                         |
      |-- Pair(store host:port, key, timeout) ---------gRPC------>| connect(key, rank=0)
      |   both ends: publish {backend, version} under the key and check the other's,
      |   build the 2-rank group, exchange a hello (NCCL opens its communicator here)
      |<------------------------------------------- PairReply ----|
      :                                                           :
      |-- Prefill(request) ----------------------------gRPC------>| first token; KV held here
      |<-------------------------- PrefillReply(KvDescriptor) ----|
      | recv(request_id, shape, dtype), posted in a thread        |
      |-- SendKv(request_id) --------------------------gRPC------>| export the held KV
      |<====== header: 1024 bytes of UTF-8 JSON (KvHeader) =======| send(request_id, kv)
      |<====== payload: the raw bytes of [L, 2, n, heads, dim] ===|
      | check the header against the KvDescriptor                 |
      | recompute the checksum the header names                   |
      | verified: import into this worker's KV cache              |
      |<----------------------------------------- SendKvReply ----|

If the prefill worker no longer holds the KV it answers the posted recv with a header-only
refusal (``KvChannel.refuse``) instead of leaving it to time out.

Who owns a request's KV, and when:

    time -------------------------------------------------------------------------------->
    prefill  |== holds it: Prefill .. SendKv ==|== only read while sent ==| freed when SendKv
             |  (Abort or the hold TTL frees)  |                          | ends, sent or not
    decode                                     |== receiving: unusable ==|== owns it once recv
                                                                           returned it, verified

The decode worker owns the KV only once ``recv`` returns it; any ``KvTransferError`` means that
transfer's KV must not be used (fail closed). Whether the pair survives is ``KvChannel.broken``:
header and checksum failures leave it usable, timeouts and socket errors break it, and its owner
then closes it and pairs again under a new key.

Files: ``header.py`` (the wire header), ``checksums.py`` (payload checksums), ``store.py`` (the
decode worker's TCPStore), ``channel.py`` (one end of a pair). Throughput: ``benchmarks/kv_transfer.py``.
"""

from .channel import RECEIVER, SENDER, KvChannel, backend_for
from .checksums import checksum
from .errors import KvTransferError
from .header import HEADER_BYTES, KvHeader
from .store import KvStoreServer

__all__ = ["HEADER_BYTES", "RECEIVER", "SENDER", "KvChannel", "KvHeader", "KvStoreServer",
           "KvTransferError", "backend_for", "checksum"]
