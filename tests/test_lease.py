"""The fencing lease's arithmetic (kvtwist.lease), without ZooKeeper."""

from __future__ import annotations

from twisted.trial import unittest

from kvtwist.lease import Lease


class LeaseTests(unittest.SynchronousTestCase):
    """Renewal, expiry and sessions of a Lease, on made-up times."""

    def test_no_lease_until_a_probe_is_answered(self) -> None:
        """A fresh lease has no expiry, is valid at no time and held by no session."""
        lease = Lease(1.2)
        self.assertIsNone(lease.expires_at)
        self.assertFalse(lease.valid(0.0))
        self.assertFalse(lease.held_by(7))
        self.assertFalse(lease.held_by(None))

    def test_lasts_its_length_past_the_send_time(self) -> None:
        """An answered probe sent at t makes the lease valid until just before t + length."""
        lease = Lease(1.2)
        lease.renew(7, 10.0)
        self.assertEqual(lease.expires_at, 11.2)
        self.assertTrue(lease.valid(10.0))
        self.assertTrue(lease.valid(11.19))
        self.assertFalse(lease.valid(11.2))
        self.assertTrue(lease.held_by(7))
        self.assertFalse(lease.held_by(8))
        self.assertFalse(lease.held_by(None))

    def test_late_answer_to_an_older_probe_does_not_shorten_it(self) -> None:
        """Within a session the latest send time answered counts, whatever the answer order."""
        lease = Lease(1.0)
        lease.renew(7, 20.0)
        lease.renew(7, 19.0)
        self.assertEqual(lease.expires_at, 21.0)

    def test_new_session_starts_afresh(self) -> None:
        """An answer in another session replaces the lease, even from an earlier send time."""
        lease = Lease(1.0)
        lease.renew(7, 20.0)
        lease.renew(8, 19.5)
        self.assertTrue(lease.held_by(8))
        self.assertFalse(lease.held_by(7))
        self.assertEqual(lease.expires_at, 20.5)

    def test_void_ends_it_until_the_next_renewal(self) -> None:
        """void() (our znode was found gone) ends the lease; the next answered probe renews it."""
        lease = Lease(1.0)
        lease.renew(7, 5.0)
        lease.void()
        self.assertFalse(lease.valid(5.1))
        self.assertFalse(lease.held_by(7))
        lease.renew(7, 6.0)
        self.assertTrue(lease.valid(6.5))

    def test_length_follows_the_granted_timeout(self) -> None:
        """A changed length moves the expiry of the lease already held."""
        lease = Lease(6.0)
        lease.renew(7, 0.0)
        lease.length = 3.0
        self.assertEqual(lease.expires_at, 3.0)
        self.assertFalse(lease.valid(3.5))
