"""What the HTTP/2 frame router (:class:`~.h2route.Router`) tells the code that drives it.

The router returns these from ``receive_vault`` / ``receive_child`` (and ``answer``) instead
of calling back: the driver (proxy mode's relay) bridges each ConnInfo and answers, stops on
a Shutdown, and hands the watched calls to whatever reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:  # pragma: no cover
    from .broker import ConnInfo


@dataclass(frozen=True, slots=True)
class ConnInfoSeen:
    """A ConnInfo on the broker stream. When ``relayed``, the router takes no bytes until
    :meth:`~.h2route.Router.answer` says what to pass on in its place (this event is then the last of
    its list); on a held connection there is no child to pass it to, and nothing to answer."""

    stream_id: int
    from_vault: bool
    info: ConnInfo
    relayed: bool = True


@dataclass(frozen=True, slots=True)
class UnreadBrokerMessage:
    """A broker-stream message that holds no readable ConnInfo: passed on as it is
    (a compressed one) or dropped (``dropped``)."""

    stream_id: int
    from_vault: bool
    reason: str
    dropped: bool


@dataclass(frozen=True, slots=True)
class Shutdown:
    """Vault called GRPCController/Shutdown; the call itself goes on to the child."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class CallOpened:
    """Vault opened a call on a watched path; ``headers`` its decoded header block (bytes)."""

    stream_id: int
    headers: list


@dataclass(frozen=True, slots=True)
class Data:
    """A DATA payload of a watched call (padding removed), from Vault or from the child."""

    stream_id: int
    from_vault: bool
    payload: bytes


@dataclass(frozen=True, slots=True)
class CallEnded:
    """A watched call ended: ``complete`` when the child ended it (its trailers, or DATA with
    END_STREAM), not when either side reset it or the connection ended."""

    stream_id: int
    complete: bool


Event = Union[ConnInfoSeen, UnreadBrokerMessage, Shutdown, CallOpened, Data, CallEnded]
