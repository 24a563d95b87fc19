"""tunnelgw.watch: the round trip measured from the gateway's ping to the client's pong (in memory, Clock)."""

from __future__ import annotations

from twisted.internet.task import Clock

from tunnelgw.watch import SessionWatch


class _Session:
    """A watched session that records what the watch asks of it."""

    def __init__(self) -> None:
        self.pings = 0
        self.dropped = False
        self.round_trips: list[float] = []

    def payload_bytes(self) -> int:
        return 0

    def reading_paused(self) -> bool:
        return False

    def send_ping(self) -> None:
        self.pings += 1

    def idle_expired(self, timeout: float) -> None:
        raise AssertionError("no idle timeout here")

    def pong_missing(self, deadline: float) -> None:
        self.dropped = True

    def round_trip_measured(self, seconds: float) -> None:
        self.round_trips.append(seconds)


class RoundTripTests:
    """Each pong after a ping measures one round trip; a pong with no ping outstanding measures nothing."""

    def test_round_trips_are_measured_and_reported(self) -> None:
        clock, session = Clock(), _Session()
        seen = session.round_trips
        watch = SessionWatch(clock, session, 0, 10, 5)
        watch.start()
        watch.pong_received()  # unsolicited: nothing to measure
        assert watch.round_trip is None and seen == []
        clock.advance(10)
        assert session.pings == 1
        clock.advance(0.25)
        watch.pong_received()
        assert watch.round_trip == 0.25 and seen == [0.25]
        watch.pong_received()  # a second pong for the same ping changes nothing
        assert seen == [0.25]
        clock.pump([4.75, 5])  # the pong check at 15, the next ping at 20
        assert session.pings == 2
        clock.advance(0.5)
        watch.pong_received()
        assert watch.round_trip == 0.5 and seen == [0.25, 0.5] and not session.dropped
        watch.stop()
        assert clock.getDelayedCalls() == []
