"""Impossible state moves are rejected with an error naming the states and the event."""

from __future__ import annotations

import logging

import pytest

from webscale.transport import _ALLOWED as CONN_MOVES
from webscale.transport import Transport
from webscale.errors import StateError
from webscale.protocol import _ALLOWED as PHASE_MOVES
from webscale.protocol import Phase
from webscale.states import check_move

log = logging.getLogger("test")


def test_allowed_move_returns_the_new_state() -> None:
    assert check_move(PHASE_MOVES, Phase.OPEN, Phase.FAILING, "bad frame", 7, log) is Phase.FAILING


@pytest.mark.parametrize("table, current, to", [
    (PHASE_MOVES, Phase.CLOSED, Phase.OPEN),
    (PHASE_MOVES, Phase.FAILING, Phase.CLOSING),
    (CONN_MOVES, Transport.CLOSED, Transport.OPEN),
    (CONN_MOVES, Transport.OPEN, Transport.TLS_HANDSHAKE),
])
def test_impossible_move_raises_naming_states_and_event(table, current, to) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(StateError, match=f"conn 7: cannot move from {current.value} to "
                                         f"{to.value} on some event"):
        check_move(table, current, to, "some event", 7, log)


def test_every_state_has_a_row() -> None:
    assert set(PHASE_MOVES) == set(Phase)
    assert set(CONN_MOVES) == set(Transport)
