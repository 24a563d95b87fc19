"""
Tests for :mod:`tunnelgw.relayend`: the one relay timer and the one drop
both glues use, on a ``Clock`` and a ``StringTransport``.
"""

from __future__ import annotations

from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase
from websockets.speedups import apply_mask  # type: ignore[import-not-found]
from zope.interface import implementer

from tunnelgw.core.sessionrelay import Action, ArmTimer, Carries, Drop, Role, SessionRelay
from tunnelgw.relayend import RelayTimer, drop


@implementer(IPushProducer)
class _Producer:
    def pauseProducing(self) -> None:
        """Not used."""

    def resumeProducing(self) -> None:
        """Not used."""

    def stopProducing(self) -> None:
        """Not used."""


class RelayTimerTests(TestCase):
    """A relay's deadline, armed, re-armed, fired and cancelled on the reactor's clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(100)
        self.relay = SessionRelay(Role.SERVER, Carries.PAYLOAD, apply_mask, close_timeout=3.0)
        self.done: list[Action] = []
        self.timer = RelayTimer(self.clock, self.relay, self.done.extend)

    def test_fires_the_relays_timer_at_its_deadline(self) -> None:
        """A close not answered: the relay's Drop comes at the deadline ArmTimer named, not before."""
        armed = self.relay.send_close(1001, "bye", self.clock.seconds())[-1]
        assert isinstance(armed, ArmTimer)
        self.timer.arm(armed.at)
        self.clock.advance(2.99)
        self.assertEqual(self.done, [])
        self.clock.advance(0.01)
        self.assertEqual(self.done, [Drop(True, "the peer did not answer the close in time")])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_rearm_replaces_and_cancel_disarms(self) -> None:
        """Arming again leaves one call; cancel leaves none; a past time fires at once."""
        self.timer.arm(110)
        self.timer.arm(120)
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [120])
        self.timer.cancel()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.timer.cancel()
        self.timer.arm(50)
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [100])


class DropTests(TestCase):
    """One way to carry out a Drop on a transport."""

    def test_clean_drop_unregisters_the_producer_first(self) -> None:
        """Drop(False): the producer goes (a drained queue cannot resume it), then loseConnection; no abort."""
        transport = StringTransport()
        transport.registerProducer(_Producer(), True)
        drop(transport, Drop(False))
        self.assertIsNone(transport.producer)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.disconnected)

    def test_abort(self) -> None:
        """Drop(True) aborts; no transport, nothing to do."""
        transport = StringTransport()
        drop(transport, Drop(True))
        self.assertTrue(transport.disconnected)
        drop(None, Drop(True))
