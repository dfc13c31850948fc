"""The one error the KV handoff raises for anything the wire or the peer got wrong."""


class KvTransferError(RuntimeError):
    """A pairing or transfer failed, or the received KV did not verify.

    Fail closed: whoever catches this must not decode with the KV of that transfer. Whether the
    pair is still usable is ``KvChannel.broken``, not this error's type.
    """
