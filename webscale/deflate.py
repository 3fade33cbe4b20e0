"""permessage-deflate negotiation that follows RFC 7692 where wsproto is lenient.

wsproto's PerMessageDeflate accepts an offer with parameters it does not know, and when a client
sends several offers it runs `accept()` on each, so state from a declined or earlier offer leaks
into the one agreed. RFC 7692 §5 and §7.1: an offer with an unknown parameter, a repeated
parameter, a value where none is allowed or a window size outside 8-15 must be declined, and the
server agrees to at most one offer. `NegotiatedDeflate.accept` checks each offer first and lets
wsproto accept only the first valid one; the compression itself stays wsproto's.
"""

from __future__ import annotations

from wsproto.extensions import PerMessageDeflate

_FLAGS = frozenset({"client_no_context_takeover", "server_no_context_takeover"})
_WINDOWS = frozenset({"client_max_window_bits", "server_max_window_bits"})


def valid_offer(offer: str) -> bool:
    """True when every parameter of a permessage-deflate offer is known, single and well formed."""
    seen: set[str] = set()
    for param in offer.split(";")[1:]:
        name, has_value, value = (part.strip() for part in param.partition("="))
        if name in seen:
            return False
        seen.add(name)
        if name in _FLAGS:
            if has_value:
                return False
        elif name in _WINDOWS:
            value = value.strip('"')
            if has_value and not (value.isdigit() and 8 <= int(value) <= 15):
                return False
            if name == "server_max_window_bits" and not has_value:
                return False  # §7.1.2.1: the server parameter needs a value
        else:
            return False
    return True


class NegotiatedDeflate(PerMessageDeflate):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._agreed = False

    def accept(self, offer: str) -> bool | str | None:
        if self._agreed or not valid_offer(offer):
            return None  # decline this offer; wsproto moves on to the client's next one
        result = super().accept(_unquoted(offer))
        self._agreed = result is not None
        return result


def _unquoted(offer: str) -> str:
    """RFC 7692 §7.1 allows a quoted value (`server_max_window_bits="12"`); wsproto does not."""
    return offer.replace('"', "")
