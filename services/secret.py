"""The worker secret: the shared token every gRPC call to a worker carries.

Rule: a worker built with a secret answers a call only if its metadata ``tandem-worker-secret``
equals that secret (``hmac.compare_digest``, constant time); anything else ends UNAUTHENTICATED
before the servicer runs. The gRPC health service (``/grpc.health.v1.Health/``) stays open so that
probes need no secret; it says SERVING or not and nothing else. A worker built with an empty secret
is open (tests and ``TANDEM_INSECURE_WORKERS=1`` only: ``tandem prefill``/``decode`` refuse to
start without one, docs/architecture.md "The closed internal network").

Clients add the metadata with an interceptor: ``secret_channel`` (sync, the decode worker calling
the prefill worker, tests) and ``aio_interceptors`` (the gateway).
"""

from __future__ import annotations

import hmac
from collections import namedtuple

import grpc
import grpc.aio

METADATA_KEY = "tandem-worker-secret"
OPEN_PREFIX = "/grpc.health.v1.Health/"


class SecretInterceptor(grpc.ServerInterceptor):
    """Refuses every call (but health) whose ``tandem-worker-secret`` is not ``secret``."""

    def __init__(self, secret: str):
        if not secret:
            raise ValueError("the worker secret must not be empty")
        self._secret = secret.encode()
        self._refuse = grpc.unary_unary_rpc_method_handler(_unauthenticated)

    def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(OPEN_PREFIX):
            return continuation(handler_call_details)
        sent = dict(handler_call_details.invocation_metadata or ()).get(METADATA_KEY, "")
        if hmac.compare_digest(sent.encode() if isinstance(sent, str) else sent, self._secret):
            return continuation(handler_call_details)
        return self._refuse


def _unauthenticated(request, context: grpc.ServicerContext):
    context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong worker secret")


def server_interceptors(secret: str) -> list[grpc.ServerInterceptor]:
    """What a worker's gRPC server runs: the check, or nothing for an open worker."""
    return [SecretInterceptor(secret)] if secret else []


class _Details(namedtuple("_Details", ("method", "timeout", "metadata", "credentials",
                                       "wait_for_ready", "compression")), grpc.ClientCallDetails):
    pass


class _SendSecret(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    def __init__(self, secret: str):
        self._pair = (METADATA_KEY, secret)

    def _details(self, d):
        return _Details(d.method, d.timeout, [*(d.metadata or ()), self._pair], d.credentials,
                        d.wait_for_ready, d.compression)

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)


def secret_channel(address: str, secret: str, options=None) -> grpc.Channel:
    """A sync channel to a worker whose calls carry ``secret`` (none when it is empty)."""
    channel = grpc.insecure_channel(address, options=options)
    return grpc.intercept_channel(channel, _SendSecret(secret)) if secret else channel


class _AioSecretDetails:
    def __init__(self, secret: str):
        self._pair = (METADATA_KEY, secret)

    def _details(self, d):
        metadata = grpc.aio.Metadata(*(d.metadata or ()), self._pair)
        return grpc.aio.ClientCallDetails(d.method, d.timeout, metadata, d.credentials, d.wait_for_ready)


# grpc.aio files an interceptor under one kind only, so each kind gets its own class.
class _AioUnarySecret(_AioSecretDetails, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details), request)


class _AioStreamSecret(_AioSecretDetails, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details), request)


def aio_interceptors(secret: str) -> list:
    """Interceptors for a ``grpc.aio`` channel to workers: its calls carry ``secret``."""
    return [_AioUnarySecret(secret), _AioStreamSecret(secret)] if secret else []
