"""Arbitrary bytes and arbitrary messages against the node protocol, in memory.

Whatever arrives, no exception escapes (trial also fails a test on any error
logged with a traceback), every reply is a well-formed frame, and the store
holds exactly the writes the node acknowledged.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from kvtwist import wire
from kvtwist.proto.kvtwist_pb2 import Entry, RangeSpec
from kvtwist.server import Limits
from kvtwist.wire import Message
from tests.test_server import Conn, Harness

OPCODES = [0, 10, 11, 20, 30, 40, 50, 60, 70, 80, 99, 110, 120, 200, 210, 220, 230, 240, 7, 1000]
CTYPES = [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 5]
FUZZ_EXAMPLES = int(os.environ.get("KVTWIST_FUZZ_EXAMPLES", "300"))
# text and bytes that are no UTF-8 (a lone 0xe9, NUL, 0xff): every byte string is a key
pieces = [b"a", b"b", "\u00e9".encode(), "\U0001f600".encode(), b"\xe9", b"\x00", b"\xff"]
keys = st.lists(st.sampled_from(pieces), max_size=8).map(b"".join)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    op = draw(st.sampled_from(OPCODES))
    msg = Message(opcode=op, c_type=draw(st.sampled_from(CTYPES)))  # type: ignore[arg-type]
    if draw(st.booleans()):
        msg.entry.CopyFrom(Entry(key=draw(keys), data=draw(st.binary(max_size=40))))
    msg.keys.extend(draw(st.lists(keys, max_size=2)))
    msg.values.extend(draw(st.lists(st.binary(max_size=10), max_size=2)))
    msg.result = draw(st.integers(-(2**31), 2**31 - 1))
    if draw(st.booleans()):
        msg.op_n = draw(st.integers(0, 2**64 - 1))
    if draw(st.booleans()):
        msg.range.CopyFrom(RangeSpec(start=draw(keys), limit=draw(st.integers(0, 2**32 - 1))))
    msg.local = draw(st.booleans())
    return msg


@st.composite
def good_requests(draw: st.DrawFn) -> Message:
    k = draw(keys.filter(bool))
    return draw(st.sampled_from([
        wire.req_put(k, draw(st.binary(max_size=20))), wire.req_del(k), wire.req_get(k),
        wire.req_size(), wire.req_getkeys(), wire.req_range(k, None, 3),
    ]))


def assert_frames(data: bytes) -> list[Message]:
    """Every byte the node sent parses as complete frames of Messages."""
    dec = wire.FrameDecoder(1 << 30)
    out = [wire.decode(p) for p in dec.feed(data)]
    assert dec.buffered == 0, "a partial frame was sent"
    return out


class FuzzTests(SynchronousTestCase):
    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.one_of(messages(), good_requests()), max_size=30))
    def test_messages_keep_store_consistent(self, msgs: list[Message]) -> None:
        """Any message sequence: one well-formed reply per request, the store equals the model."""
        h = Harness(Limits(max_key=8, max_value=32))
        c = Conn(h)
        model: dict[bytes, bytes] = {}
        replies = c.send(*msgs)
        client_msgs = [m for m in msgs if m.opcode not in wire.CHAIN_OPS]
        self.assertEqual(len(replies), len(client_msgs) + (len(msgs) - len(client_msgs)))
        for req, rep in zip(msgs, replies, strict=True):
            if rep.opcode == wire.OP_ERROR:
                self.assertTrue(rep.error)
                continue
            self.assertEqual(rep.opcode, req.opcode + 1)
            if req.opcode == wire.OP_PUT:
                model[req.entry.key] = req.entry.data
            elif req.opcode == wire.OP_DEL:
                self.assertEqual(rep.found, req.keys[0] in model)
                model.pop(req.keys[0], None)
        self.assertEqual(h.replica.committed_tree.items(), sorted(model.items()))
        h.replica.committed_tree.check()

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.binary(max_size=400), st.integers(1, 64))
    def test_arbitrary_bytes(self, data: bytes, step: int) -> None:
        """Any byte stream in any chunking: only well-formed frames come back, nothing is stored
        but what was acknowledged."""
        h = Harness(Limits(max_frame=200))
        c = Conn(h)
        for i in range(0, len(data), step):
            if c.transport.disconnecting:
                break
            c.proto.dataReceived(data[i : i + step])
        h.settle()
        replies = assert_frames(c.transport.value())
        acked = sum(1 for r in replies if r.opcode in (wire.OP_PUT + 1, wire.OP_DEL + 1))
        self.assertEqual(h.replica.committed_seq, acked)

    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(good_requests(), min_size=1, max_size=20), st.binary(max_size=50))
    def test_garbage_then_good_requests(self, good: list[Message], junk: bytes) -> None:
        """After an undecodable frame, the following requests are still answered."""
        h = Harness()
        c = Conn(h)
        frame = len(junk).to_bytes(4, "big") + junk
        replies = c.send_raw(frame + b"".join(wire.frame(m) for m in good))
        self.assertEqual(len(replies), len(good) + 1)
