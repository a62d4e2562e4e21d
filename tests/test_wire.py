"""Framing, the message's compatibility with the original, and .proto/module sync."""

from __future__ import annotations

import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from kvtwist import wire
from kvtwist.proto import kvtwist_pb2

PROTO_DIR = Path(kvtwist_pb2.__file__).parent


class FrameDecoderTests(SynchronousTestCase):
    def test_split_anywhere(self) -> None:
        """Frames cut into one-byte pieces come out whole and in order."""
        msgs = [wire.req_put(b"k", b"v" * 10), wire.req_get(b"k"), wire.req_size()]
        stream = b"".join(wire.frame(m) for m in msgs)
        dec = wire.FrameDecoder()
        out: list[bytes] = []
        for i in range(len(stream)):
            out.extend(dec.feed(stream[i : i + 1]))
        self.assertEqual([wire.decode(p) for p in out], msgs)
        self.assertEqual(dec.buffered, 0)

    def test_zero_length_frame(self) -> None:
        """An empty frame is a message with every field at its default."""
        self.assertEqual(wire.FrameDecoder().feed(b"\x00\x00\x00\x00"), [b""])

    def test_oversized_header_rejected_before_buffering(self) -> None:
        """A header above the limit raises at once, whatever follows."""
        dec = wire.FrameDecoder(max_frame=100)
        with self.assertRaises(wire.FrameTooLarge) as cm:
            dec.feed(b"\xff\xff\xff\xff")
        self.assertEqual(cm.exception.length, 0xFFFFFFFF)
        self.assertLess(dec.buffered, 8)

    @settings(max_examples=50, deadline=None)
    @given(st.lists(st.binary(max_size=300), max_size=10), st.integers(1, 50))
    def test_any_chunking(self, payloads: list[bytes], step: int) -> None:
        """Any payloads, fed in chunks of any size, are recovered exactly."""
        stream = b"".join(struct.pack(">I", len(p)) + p for p in payloads)
        dec = wire.FrameDecoder()
        out: list[bytes] = []
        for i in range(0, len(stream), step):
            out.extend(dec.feed(stream[i : i + step]))
        self.assertEqual(out, payloads)


class CompatibilityTests(SynchronousTestCase):
    def test_original_fields(self) -> None:
        """Fields 1-6 keep the original C message's numbers and wire types.

        The original declares keys ``string``; kvtwist declares them ``bytes``,
        which is the same on the wire (length-delimited) but takes any bytes.
        """
        f = {x.number: x for x in kvtwist_pb2.Message.DESCRIPTOR.fields}
        fd = descriptor_pb2.FieldDescriptorProto
        self.assertEqual(f[1].name, "opcode")
        self.assertEqual(f[1].type, fd.TYPE_ENUM)
        self.assertEqual(f[2].type, fd.TYPE_ENUM)
        self.assertEqual(f[3].type, fd.TYPE_SINT32)
        self.assertEqual(f[4].type, fd.TYPE_MESSAGE)
        self.assertEqual(f[5].type, fd.TYPE_BYTES)
        self.assertTrue(f[5].is_repeated)
        self.assertEqual(f[6].type, fd.TYPE_BYTES)
        self.assertTrue(f[6].is_repeated)
        entry = {x.number: x for x in kvtwist_pb2.Entry.DESCRIPTOR.fields}
        self.assertEqual((entry[1].type, entry[2].type), (fd.TYPE_BYTES, fd.TYPE_BYTES))

    def test_original_numbers(self) -> None:
        """Opcode and c_type values are the original's."""
        ops = {
            "BAD": 0,
            "SIZE": 10,
            "HEIGHT": 20,
            "DEL": 30,
            "GET": 40,
            "PUT": 50,
            "GETKEYS": 60,
            "GETVALUES": 70,
            "VERIFY": 80,
            "ERROR": 99,
        }
        for name, n in ops.items():
            self.assertEqual(kvtwist_pb2.Message.Opcode.Value("OP_" + name), n)
        cts = {
            "BAD": 0,
            "KEY": 10,
            "VALUE": 20,
            "ENTRY": 30,
            "KEYS": 40,
            "VALUES": 50,
            "RESULT": 60,
            "NONE": 70,
        }
        for name, n in cts.items():
            self.assertEqual(kvtwist_pb2.Message.CType.Value("CT_" + name), n)

    def test_hand_encoded_request(self) -> None:
        """A PUT encoded byte by byte as the C client does decodes as expected."""
        # opcode=50, c_type=30, entry{key="ab", data="\\x01"}
        raw = bytes([0x08, 50, 0x10, 30, 0x22, 7, 0x0A, 2]) + b"ab" + bytes([0x12, 1, 1])
        msg = wire.decode(raw)
        self.assertEqual((msg.opcode, msg.c_type), (wire.OP_PUT, wire.CT_ENTRY))
        self.assertEqual((msg.entry.key, msg.entry.data), (b"ab", b"\x01"))

    def test_non_utf8_key_from_the_original_client(self) -> None:
        """A C client's key that is not UTF-8 (``caf\\xe9``) decodes as those bytes.

        With keys declared ``string`` the parser refused such a message.
        """
        key = b"caf\xe9"
        entry = bytes([0x0A, len(key)]) + key + bytes([0x12, 1, 1])
        raw = bytes([0x08, 50, 0x10, 30, 0x22, len(entry)]) + entry
        msg = wire.decode(raw)
        self.assertEqual(msg.entry.key, key)
        get = bytes([0x08, 40, 0x10, 10, 0x2A, len(key)]) + key
        self.assertEqual(list(wire.decode(get).keys), [key])
        self.assertEqual(wire.req_get(key).SerializeToString(), get)

    def test_key_fields_are_bytes(self) -> None:
        """Every field that carries a key is ``bytes``: entry, keys, range bounds, updates."""
        fd = descriptor_pb2.FieldDescriptorProto
        fields = [
            kvtwist_pb2.Entry.DESCRIPTOR.fields_by_name["key"],
            kvtwist_pb2.Message.DESCRIPTOR.fields_by_name["keys"],
            kvtwist_pb2.RangeSpec.DESCRIPTOR.fields_by_name["start"],
            kvtwist_pb2.RangeSpec.DESCRIPTOR.fields_by_name["stop"],
            kvtwist_pb2.Update.DESCRIPTOR.fields_by_name["key"],
        ]
        self.assertEqual([f.type for f in fields], [fd.TYPE_BYTES] * len(fields))

    def test_result_is_zigzag(self) -> None:
        """``result`` is sint32: -1 encodes as zigzag 1, as the original expects."""
        data = wire.Message(opcode=wire.OP_ERROR, result=-1).SerializeToString()
        self.assertIn(bytes([0x18, 0x01]), data)

    def test_result_saturates(self) -> None:
        """Op numbers beyond 32 bits keep the full value in op_n."""
        reply = wire.result_reply(wire.OP_PUT, 2**40)
        self.assertEqual(reply.result, 2**31 - 1)
        self.assertEqual(reply.op_n, 2**40)


class AssembledReplyTests(SynchronousTestCase):
    """The replies built from bytes are exactly what protobuf would serialize."""

    def test_get_reply(self) -> None:
        """A GET reply, with and without a value, of any length."""
        for value in (None, b"", b"abc", b"x" * 127, b"x" * 128, b"y" * 70_000):
            expected = wire.reply(wire.OP_GET, c_type=wire.CT_VALUE)
            if value is not None:
                expected.values.append(value)
            self.assertEqual(wire.get_reply_frame(value), wire.frame(expected), value)

    def test_write_reply(self) -> None:
        """PUT and DEL replies, op numbers beyond 32 bits and DEL's ``found`` included."""
        for op, founds in ((wire.OP_PUT, (None,)), (wire.OP_DEL, (True, False))):
            for n in (0, 1, 127, 128, 2**31 - 1, 2**31, 2**40):
                for found in founds:
                    expected = wire.result_reply(op, n)
                    if found is not None:
                        expected.found = found
                    self.assertEqual(
                        wire.write_reply_frame(op, n, found), wire.frame(expected), (op, n, found)
                    )


class AssembleTests(SynchronousTestCase):
    def test_assembled_updates_decode_as_one_message(self) -> None:
        """A head message with serialized updates appended reads as that message holding them."""
        from kvtwist.proto.kvtwist_pb2 import ChainHello, Update

        updates = [
            Update(seq=i, is_put=bool(i % 2), key=b"k%d" % i, data=b"v" * i, epoch=2)
            for i in range(1, 40)
        ]
        head = wire.Message(
            opcode=wire.OP_CHAIN_UPDATE, c_type=wire.CT_CHAIN, hello=ChainHello(sender="n1")
        )
        data = wire.assemble(head, wire.UPDATES_FIELD, [u.SerializeToString() for u in updates])
        [payload] = wire.FrameDecoder().feed(data)
        expected = wire.Message()
        expected.CopyFrom(head)
        expected.updates.extend(updates)
        self.assertEqual(wire.decode(payload), expected)


class ProtoSyncTests(SynchronousTestCase):
    def test_generated_module_matches_proto(self) -> None:
        """The committed kvtwist_pb2 was generated from the committed .proto."""
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "set.pb"
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "grpc_tools.protoc",
                    f"-I{PROTO_DIR}",
                    f"--descriptor_set_out={out}",
                    "kvtwist.proto",
                ],
                check=True,
            )
            fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
        compiled = fds.file[0]
        _strip_json_names(compiled)  # protoc adds them to descriptor sets only
        committed = descriptor_pb2.FileDescriptorProto.FromString(
            kvtwist_pb2.DESCRIPTOR.serialized_pb
        )
        self.assertEqual(compiled, committed, "regenerate: see docs/protocol.md")


def _strip_json_names(f: descriptor_pb2.FileDescriptorProto) -> None:
    def walk(m: descriptor_pb2.DescriptorProto) -> None:
        for field in m.field:
            field.ClearField("json_name")
        for nested in m.nested_type:
            walk(nested)

    for m in f.message_type:
        walk(m)
