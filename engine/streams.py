"""Memory-object streams without a trip through the event loop for every item.

anyio's ``send()`` and ``receive()`` begin with a scheduling checkpoint: the task goes to the back
of the event loop's queue even when the item could pass at once. A chunk crosses two streams
(producer → worker → collector), so at thousands of chunks a second those four trips were about
a tenth of the loop's time. These helpers hand the item over at once when they can and use the
awaiting call (checkpoint included) only when they must wait. Nothing starves: a worker awaits its
HTTP answer after every chunk, and the collector's buffer holds at most a few dozen results.
"""

from __future__ import annotations

from typing import TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

T = TypeVar("T")


async def send(stream: MemoryObjectSendStream[T], item: T) -> None:
    """``stream.send(item)``, at once when there is room or a receiver waiting."""
    try:
        stream.send_nowait(item)
    except anyio.WouldBlock:
        await stream.send(item)


async def receive(stream: MemoryObjectReceiveStream[T]) -> T:
    """``stream.receive()``, at once when an item is waiting; EndOfStream when none ever will."""
    try:
        return stream.receive_nowait()
    except anyio.WouldBlock:
        return await stream.receive()
