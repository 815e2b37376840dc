"""grpcio settings shared by our servers and channels.

go-plugin and Vault use MaxInt32 message sizes both ways; grpcio's default receive
limit is 4 MiB, which large Vault responses exceed. ``-1`` means unlimited in grpcio.
"""

from __future__ import annotations

from concurrent import futures
from typing import Sequence

import grpc

OPTIONS = (
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
)


def new_server(max_workers: int, handlers: Sequence[grpc.GenericRpcHandler] = ()) -> grpc.Server:
    return grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="goplugin-rpc"),
                       handlers=list(handlers) or None, options=OPTIONS)


def bind_unix(server: grpc.Server, path: str) -> None:
    if server.add_insecure_port("unix:" + path) == 0:
        raise OSError(f"grpc could not listen on unix socket {path}")


def grpc_target(network: str, address: str) -> str:
    if network == "unix":
        return "unix:" + address
    if network == "tcp":
        return address
    raise ValueError(f"unknown network {network!r}")


def new_channel(target: str) -> grpc.Channel:
    return grpc.insecure_channel(target, options=OPTIONS)


class FrontedChannel(grpc.Channel):
    """A channel that also closes the TLS front it dials through."""

    def __init__(self, channel: grpc.Channel, front):
        self._channel, self.front = channel, front

    def subscribe(self, callback, try_to_connect=False):
        return self._channel.subscribe(callback, try_to_connect)

    def unsubscribe(self, callback):
        return self._channel.unsubscribe(callback)

    def unary_unary(self, method, *args, **kwargs):
        return self._channel.unary_unary(method, *args, **kwargs)

    def unary_stream(self, method, *args, **kwargs):
        return self._channel.unary_stream(method, *args, **kwargs)

    def stream_unary(self, method, *args, **kwargs):
        return self._channel.stream_unary(method, *args, **kwargs)

    def stream_stream(self, method, *args, **kwargs):
        return self._channel.stream_stream(method, *args, **kwargs)

    def close(self):
        try:
            self._channel.close()
        finally:
            self.front.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
