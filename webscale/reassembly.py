"""Reassembling a message: one piece when it came whole, pieces in one buffer when it did not.

How this works: a message that arrives in one frame and one read (the usual) is checked against
--max-message-size and passed on as it is: text counted encoded, as it came on the wire. One that
comes in pieces (fragments, or a frame cut across reads) is kept as its bytes in one bytearray,
charged to the server's memory budget as it grows, plus `FRAGMENT_OVERHEAD` for every frame
before its last: a frame costs parsing whatever it carries, so a message of empty or tiny
fragments reaches the cap too instead of never. Past the cap the protocol refuses the message
(`_too_big`: 1009).

`Reassembly` is a part of `protocol.ServerProtocol` (a mixin over its slots).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from .budget import MemoryBudget
from .events import MessageReceived

# Charged against --max-message-size for every frame before a message's last: a frame costs
# parsing whatever it carries, so empty and tiny fragments reach the cap too. A message in one
# frame is charged nothing, however many reads it arrives in.
FRAGMENT_OVERHEAD = 64


class _Capped(Protocol):
    """What reassembly reads of the protocol's limits (protocol.ProtocolLimits has it)."""

    @property
    def max_message_size(self) -> int: ...


class Reassembly:
    # No slots of its own: the protocol's hold everything. (Hidden from the type checker, which
    # would otherwise refuse the assignments to those slots.)
    if not TYPE_CHECKING:
        __slots__ = ()

    if TYPE_CHECKING:  # what it uses of protocol.ServerProtocol, which defines all of these
        limits: _Capped
        _budget: MemoryBudget
        _partial: bytearray | None
        _partial_text: bool
        _part_bytes: int

        def _too_big(self) -> None: ...

    @property
    def partial_bytes(self) -> int:
        """What the message being reassembled holds, as charged to the memory budget."""
        return self._part_bytes

    def drop_partial(self) -> None:
        """Forget the message being reassembled and give its bytes back to the budget."""
        if self._partial is not None:
            self._budget.used -= self._part_bytes
            self._part_bytes = 0
            self._partial = None

    def _collect(self, data: str | bytes, frame_finished: bool,
                 finished: bool) -> MessageReceived | None:
        if self._partial is None and finished:  # the usual: one piece
            limit = self.limits.max_message_size
            size = len(data)
            # Text is counted encoded, as sent; a character is 4 bytes at most, so only text
            # longer than a quarter of the cap needs measuring.
            if size << 2 > limit and data.__class__ is str and not data.isascii():
                size = len(data.encode())
            if size > limit:
                self._too_big()
                return None
            return MessageReceived(data)
        return self._collect_piece(data, frame_finished, finished)

    def _collect_piece(self, data: str | bytes, frame_finished: bool,
                       finished: bool) -> MessageReceived | None:
        """One piece of a message that came in several: frames, or reads of one frame."""
        piece = data.encode() if isinstance(data, str) else data
        size = len(piece)
        held = self._part_bytes
        total = held + size
        if frame_finished and not finished:
            total += FRAGMENT_OVERHEAD
        if total > self.limits.max_message_size:
            self._too_big()
            return None
        partial = self._partial
        if partial is None:
            partial = self._partial = bytearray()
            self._partial_text = isinstance(data, str)
        if size:
            partial += piece
        if finished:
            self._partial = None
            self._part_bytes = 0
            self._budget.used -= held
            return MessageReceived(partial.decode() if self._partial_text else bytes(partial))
        self._part_bytes = total
        budget = self._budget
        budget.used += total - held
        if budget.used > budget.limit and not budget.over:
            budget.went_over()
        return None
