"""A cluster server's check that each request's key is its chain's: the run-wide fast
path gives the verdicts of the one-request check, and a run with a misplaced key is
answered request by request."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from kvtwist import wire
from kvtwist.proto.kvtwist_pb2 import Entry
from kvtwist.server.chains import Chains, Router
from kvtwist.server.dispatch import Found, answer_gets
from kvtwist.wire import Message

KEYS = st.sampled_from([b"", b"a", b"b", b"bz", b"c", b"d", b"zz"])


def request(op: str, chain: str, keys: list[bytes]) -> Message:
    if op == "put":
        key = keys[0] if keys else b""
        return Message(opcode=wire.OP_PUT, chain=chain, entry=Entry(key=key, data=b"v"))
    opcode = {"get": wire.OP_GET, "del": wire.OP_DEL}[op]
    return Message(opcode=opcode, chain=chain, keys=keys)


REQUESTS = st.builds(
    request,
    st.sampled_from(["get", "put", "del"]),
    st.just("c1"),
    st.lists(KEYS, max_size=3),
)


def chains(start: bytes, end: bytes | None) -> Chains:
    c = Chains()
    c.map_version = 7
    c.ranges = {"c1": (start, end)}
    return c


class MisplacedRunTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(REQUESTS, min_size=1, max_size=6),
        st.sampled_from([(b"", None), (b"b", b"d"), (b"", b"c"), (b"c", None)]),
    )
    def test_same_verdicts_as_one_by_one(
        self, msgs: list[Message], bounds: tuple[bytes, bytes | None]
    ) -> None:
        """Every run gets, request by request, what ``misplaced`` says of each (None for
        the run: every request is inside)."""
        c = chains(*bounds)
        one_by_one = [c.misplaced(m) for m in msgs]
        run = c.misplaced_run(msgs)
        if run is None:
            self.assertEqual(one_by_one, [None] * len(msgs))
        else:
            self.assertEqual(
                [w is not None for w in run], [w is not None for w in one_by_one]
            )

    def test_a_key_outside_is_caught_in_a_run_of_gets(self) -> None:
        """One GET outside among GETs inside: the run is refused there and only there,
        with the map version the client should move to."""
        c = chains(b"b", b"d")
        msgs = [request("get", "c1", [k]) for k in (b"b", b"c", b"d", b"bz")]
        run = c.misplaced_run(msgs)
        assert run is not None
        self.assertEqual([w is not None for w in run], [False, False, True, False])
        wrong = run[2]
        assert wrong is not None
        self.assertEqual((wrong.opcode, wrong.retry, wrong.map_version), (wire.OP_ERROR, True, 7))


class FakeDispatcher:
    def __init__(self) -> None:
        self.runs: list[list[bytes]] = []

    def get_many(self, msgs: list[Message], peer: object, room: int) -> defer.Deferred[list[bytes]]:
        self.runs.append([m.keys[0] for m in msgs])
        return defer.succeed([b"ok:" + m.keys[0] for m in msgs])


class RouterRunTests(SynchronousTestCase):
    def test_a_misplaced_get_is_refused_in_its_place(self) -> None:
        """The router answers the run in order: the GETs inside from the chain, the one
        outside with its ERROR frame, in its own place."""
        c = chains(b"b", b"d")
        fake = FakeDispatcher()
        c._replicas["c1"] = object()  # type: ignore[assignment]
        router = Router(c, lambda _r: fake)  # type: ignore[arg-type, return-value]
        msgs = [request("get", "c1", [k]) for k in (b"b", b"zz", b"c")]
        out = self.successResultOf(router.get_many(msgs, lambda: "peer", 1000))
        self.assertEqual(out[0], b"ok:b")
        self.assertEqual(out[2], b"ok:c")
        self.assertEqual(wire.decode(out[1][4:]).opcode, wire.OP_ERROR)
        self.assertEqual(fake.runs, [[b"b"], [b"c"]])


class AnswerGetsTests(SynchronousTestCase):
    """Replies of GETs of several chains are built for the prefix that fits the room."""

    def found(self, *values: bytes | None) -> Found:
        return Found(len(values), list(values), {}, None, 0.0)

    def test_the_prefix_that_fits_across_chains(self) -> None:
        """Room for three values of ten bytes: the first chain's two and one of the
        second's are answered, nothing after the cut, even what would still fit."""
        out = answer_gets(
            [self.found(b"a" * 10, b"b" * 10), self.found(b"c" * 10, b"d" * 10),
             self.found(None)],
            35,
        )
        self.assertEqual([wire.decode(f[4:]).values[0] for f in out], [b"a" * 10, b"b" * 10,
                                                                        b"c" * 10])

    def test_one_is_answered_alone_only_first(self) -> None:
        """A first value bigger than the room is still answered (alone); a later chain's
        first value is not, once the room is spent."""
        self.assertEqual(len(answer_gets([self.found(b"x" * 100), self.found(b"y")], 10)), 1)
        self.assertEqual(len(answer_gets([self.found(b"x" * 5), self.found(b"y" * 100)], 10)), 1)

    def test_built_answers_and_bad_gets_keep_their_places(self) -> None:
        """Answers built already (relayed) and the ERRORs of bad GETs sit where their
        requests were."""
        bad = Found(2, [None, b"v"], {0: b"ERR"}, None, 0.0)
        out = answer_gets([Found.built([b"R1", b"R2"]), bad], None)
        self.assertEqual(out[:3], [b"R1", b"R2", b"ERR"])
        self.assertEqual(wire.decode(out[3][4:]).values[0], b"v")
