"""The linearizability checker: known-good and known-bad histories, and its speed."""

from __future__ import annotations

import io
import itertools
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from kvtwist.verify import HistoryError, Op, check, read_history, write_history
from kvtwist.verify.campaign.report import longest_stall
from kvtwist.verify.check import main as check_main
from kvtwist.verify.durability import lost_writes
from kvtwist.verify.simulate import linearizable_history, make_stale
from kvtwist.verify.timeline import write_timeline


def op(
    process: int,
    kind: str,
    key: str,
    value: str | None,
    invoke: float,
    complete: float | None,
    outcome: str = "ok",
) -> Op:
    return Op(process, kind, key, value, invoke, complete, outcome)  # type: ignore[arg-type]


def put(p: int, value: str, a: float, b: float | None, outcome: str = "ok", key: str = "k") -> Op:
    return op(p, "put", key, value, a, b, outcome)


def get(
    p: int, value: str | None, a: float, b: float | None, outcome: str = "ok", key: str = "k"
) -> Op:
    return op(p, "get", key, value, a, b, outcome)


def delete(p: int, a: float, b: float | None, outcome: str = "ok", key: str = "k") -> Op:
    return op(p, "del", key, None, a, b, outcome)


def brute_force(ops: list[Op]) -> bool:
    """Try every order of every subset of unknown writes: the definition, slowly."""
    for key in {o.key for o in ops}:
        mine = [o for o in ops if o.key == key and o.outcome != "fail"]
        must = [o for o in mine if o.outcome == "ok"]
        maybe = [o for o in mine if o.outcome == "unknown" and o.op != "get"]
        subsets = (s for r in range(len(maybe) + 1) for s in itertools.combinations(maybe, r))
        if not any(_some_order(must + list(s)) for s in subsets):
            return False
    return True


def _some_order(chosen: list[Op]) -> bool:
    for order in itertools.permutations(chosen):
        if any(
            b.complete is not None and b.complete < a.invoke
            for i, a in enumerate(order)
            for b in order[i + 1 :]
        ):
            continue
        state: str | None = None
        for o in order:
            if o.op == "get" and o.value != state:
                break
            if o.op != "get":
                state = o.value
        else:
            return True
    return False


class LinearizableHistories(SynchronousTestCase):
    def assertLinearizable(self, ops: list[Op]) -> None:
        r = check(ops)
        self.assertTrue(r.linearizable, r.verdict())

    def test_empty(self) -> None:
        """An empty history is linearizable."""
        self.assertLinearizable([])

    def test_sequential(self) -> None:
        """Put, get, delete, get one after another on two keys."""
        self.assertLinearizable(
            [
                put(0, "a", 0, 1),
                get(1, "a", 2, 3),
                get(1, None, 2, 3, key="other"),
                delete(0, 4, 5),
                get(1, None, 6, 7),
            ]
        )

    def test_concurrent_writes_and_reads(self) -> None:
        """Overlapping writes may take effect in either order; reads during them see either."""
        self.assertLinearizable(
            [
                put(0, "a", 0, 10),
                put(1, "b", 1, 9),
                get(2, "b", 2, 3),
                get(3, "a", 4, 8),  # a after b
                get(2, "a", 11, 12),
            ]
        )

    def test_read_overlapping_a_write_sees_old_or_new(self) -> None:
        """Reads overlapping a put may see the value before it or after it."""
        self.assertLinearizable(
            [
                put(0, "a", 0, 1),
                put(0, "b", 2, 10),
                get(1, "a", 3, 4),
                get(2, "b", 5, 6),
                get(3, "b", 7, 8),
            ]
        )

    def test_unknown_write_that_took_effect(self) -> None:
        """A timed-out put whose value is read later took effect."""
        self.assertLinearizable(
            [
                put(0, "a", 0, 1),
                put(1, "b", 2, None, "unknown"),
                get(2, "a", 3, 4),
                get(2, "b", 50, 51),
                get(3, "b", 60, 61),
            ]
        )

    def test_unknown_write_that_did_not_take_effect(self) -> None:
        """A timed-out put nobody ever reads may never have happened."""
        self.assertLinearizable(
            [
                put(0, "a", 0, 1),
                put(1, "b", 2, None, "unknown"),
                get(2, "a", 3, 4),
                get(2, "a", 50, 51),
            ]
        )

    def test_unknown_delete_may_take_effect_late(self) -> None:
        """A timed-out delete may take effect long after it was sent."""
        self.assertLinearizable(
            [
                put(0, "a", 0, 1),
                delete(1, 2, None, "unknown"),
                get(2, "a", 30, 31),
                get(2, None, 50, 51),
            ]
        )

    def test_failed_and_unknown_reads_are_ignored(self) -> None:
        """A fail operation did not happen; an unknown read tells nothing."""
        self.assertLinearizable(
            [
                put(0, "a", 0, 1),
                put(1, "b", 2, 3, "fail"),
                get(2, "zzz", 4, None, "unknown"),
                get(2, "a", 5, 6),
            ]
        )


class NonLinearizableHistories(SynchronousTestCase):
    def assertRejected(self, ops: list[Op], key: str = "k") -> None:
        r = check(ops)
        self.assertFalse(r.linearizable, r.verdict())
        self.assertTrue(r.decided)
        self.assertEqual(r.bad_key, key)
        self.assertIn("stuck", r.info)
        self.assertIn("NOT linearizable", r.verdict())

    def test_stale_read(self) -> None:
        """A read after a completed overwrite returns the old value."""
        self.assertRejected([put(0, "a", 0, 1), put(0, "b", 2, 3), get(1, "a", 4, 5)])

    def test_lost_write(self) -> None:
        """An acknowledged put is gone: a later read finds the key absent."""
        self.assertRejected([put(0, "a", 0, 1), get(1, None, 2, 3)])

    def test_never_written_value(self) -> None:
        """A read returns a value no put ever wrote."""
        self.assertRejected([put(0, "a", 0, 1), get(1, "ghost", 2, 3)])

    def test_two_writes_seen_in_both_orders(self) -> None:
        """Two readers see concurrent puts in opposite orders."""
        self.assertRejected(
            [
                put(0, "a", 0, 1),
                put(1, "b", 0, 1),
                get(2, "a", 2, 3),
                get(2, "b", 4, 5),
                get(3, "b", 2, 3),
                get(3, "a", 4, 5),
            ]
        )

    def test_read_after_completed_delete(self) -> None:
        """A read after a completed delete returns the deleted value."""
        self.assertRejected([put(0, "a", 0, 1), delete(0, 2, 3), get(1, "a", 4, 5)])

    def test_failed_write_read(self) -> None:
        """A put that definitely failed cannot be read."""
        self.assertRejected([put(0, "a", 0, 1, "fail"), get(1, "a", 2, 3)])

    def test_unknown_write_read_before_it_was_sent(self) -> None:
        """Reading an unknown put's value before the put was invoked is a violation."""
        self.assertRejected([get(1, "a", 0, 1), put(0, "a", 2, None, "unknown")])

    def test_nonmonotonic_reads_of_unknown_write(self) -> None:
        """Once a reader saw an unknown put take effect, later reads cannot go back."""
        self.assertRejected(
            [
                put(0, "a", 0, 1),
                put(1, "b", 2, None, "unknown"),
                get(2, "b", 3, 4),
                get(2, "a", 5, 6),
            ]
        )

    def test_only_the_bad_key_is_blamed(self) -> None:
        """With many good keys and one bad one, the bad one is reported."""
        ops = []
        for i in range(10):
            ops += [put(0, f"v{i}", 2 * i, 2 * i + 1, key=f"good{i}")]
            ops += [get(1, f"v{i}", 2 * i + 1.5, 2 * i + 1.7, key=f"good{i}")]
        ops += [put(0, "x", 0, 1, key="bad"), get(1, None, 5, 6, key="bad")]
        self.assertRejected(ops, key="bad")


class AgainstTheDefinition(SynchronousTestCase):
    def test_random_small_histories_agree_with_brute_force(self) -> None:
        """On 2,000 random small histories the checker agrees with exhaustive search."""
        rng = random.Random(2024)
        verdicts = set()
        for _ in range(2000):
            ops: list[Op] = []
            written: list[str | None] = [None, "never"]
            for i in range(rng.randint(1, 6)):
                kind = rng.choice(["get", "get", "put", "put", "del"])
                a = float(rng.randint(0, 8))
                b = a + rng.randint(0, 5)
                outcome = rng.choices(["ok", "unknown", "fail"], [0.75, 0.18, 0.07])[0]
                value = f"v{i}" if kind == "put" else None
                if value is not None:
                    written.append(value)
                key = "k" if rng.random() < 0.8 else "j"
                ops.append(op(i, kind, key, value, a, None if outcome == "unknown" else b, outcome))
            ops = [
                o
                if o.op != "get" or o.outcome == "unknown"
                else op(o.process, "get", o.key, rng.choice(written), o.invoke, o.complete)
                for o in ops
            ]
            expected = brute_force(ops)
            verdicts.add(expected)
            self.assertEqual(check(ops).linearizable, expected, "\n".join(map(str, ops)))
        self.assertEqual(verdicts, {True, False})


class Scale(SynchronousTestCase):
    def test_ten_thousand_operations(self) -> None:
        """10,000 concurrent operations over 20 keys check in seconds; one stale read is caught."""
        ops = linearizable_history(
            10_000,
            keys=20,
            processes=40,
            seed=5,
            mean_latency=1.0,
            mean_gap=0.05,
            unknown_rate=0.03,
        )
        self.assertEqual(len({o.key for o in ops}), 20)
        started = time.monotonic()
        good = check(ops)
        took = time.monotonic() - started
        print(f"\n10,000-op linearizable history checked in {took:.3f}s: {good.verdict()}")
        self.assertTrue(good.linearizable, good.verdict())
        self.assertLess(took, 10.0)

        bad, index = make_stale(ops, seed=5)
        started = time.monotonic()
        r = check(bad)
        took = time.monotonic() - started
        print(f"the same with one stale read (op {index}) rejected in {took:.3f}s: {r.verdict()}")
        self.assertFalse(r.linearizable)
        self.assertTrue(r.decided)
        self.assertEqual(r.bad_key, bad[index].key)
        self.assertLess(took, 10.0)

    def test_timeout_is_undecided(self) -> None:
        """A search that runs out of time proves nothing and says so."""
        ops = linearizable_history(3000, keys=1, processes=40, seed=1, mean_latency=1.0)
        r = check(make_stale(ops)[0], timeout=0.0)
        self.assertFalse(r.linearizable)
        self.assertFalse(r.decided)
        self.assertIn("undecided", r.verdict())


class Files(SynchronousTestCase):
    def mktemp(self) -> str:
        """A fresh path in a private directory (trial's mktemp litters the working directory)."""
        d = tempfile.mkdtemp(prefix="kvtwist-verify-")
        self.addCleanup(shutil.rmtree, d, True)
        return str(Path(d) / "file")

    def test_round_trip(self) -> None:
        """write_history then read_history gives back the same operations."""
        ops = linearizable_history(200, keys=3, seed=3, unknown_rate=0.2, fail_rate=0.1)
        path = Path(self.mktemp())
        write_history(path, ops)
        self.assertEqual(read_history(path), ops)
        first = json.loads(path.read_text().splitlines()[0])
        self.assertEqual(
            set(first), {"process", "op", "key", "value", "invoke", "complete", "outcome"}
        )

    def test_malformed_records_are_refused(self) -> None:
        """Bad records name their line and what is wrong."""
        good = {
            "process": 1,
            "op": "get",
            "key": "k",
            "value": None,
            "invoke": 1.0,
            "complete": 2.0,
            "outcome": "ok",
        }
        for change, message in [
            ({"op": "cas"}, "'op'"),
            ({"outcome": "maybe"}, "'outcome'"),
            ({"complete": 0.5}, "before it is invoked"),
            ({"complete": None}, "needs a completion time"),
            ({"process": "p1"}, "'process'"),
            ({"op": "put", "value": None}, "needs a value"),
        ]:
            path = Path(self.mktemp())
            path.write_text("\n" + json.dumps({**good, **change}) + "\n")
            with self.assertRaises(HistoryError) as caught:
                read_history(path)
            self.assertIn(":2:", str(caught.exception))
            self.assertIn(message, str(caught.exception))

    def test_cli(self) -> None:
        """The command prints one verdict line; exit 0 when linearizable, 1 when not."""
        good = Path(self.mktemp())
        write_history(good, [put(0, "a", 0, 1), get(1, "a", 2, 3)])
        bad = Path(self.mktemp())
        write_history(bad, [put(0, "a", 0, 1), get(1, "b", 2, 3)])
        for path, status, word in [(good, 0, "linearizable"), (bad, 1, "NOT linearizable")]:
            out = io.StringIO()
            with redirect_stdout(out):
                self.assertEqual(check_main([str(path)]), status)
            lines = out.getvalue().splitlines()
            self.assertEqual(len(lines), 1)
            self.assertTrue(lines[0].startswith(word), lines[0])
        with redirect_stderr(io.StringIO()):
            self.assertEqual(check_main([self.mktemp()]), 2)

    def test_python_m(self) -> None:
        """``python -m kvtwist.verify.check`` runs cleanly as a program."""
        bad = Path(self.mktemp())
        write_history(bad, [put(0, "a", 0, 1), delete(0, 2, 3), get(1, "a", 4, 5)])
        run = subprocess.run(
            [sys.executable, "-m", "kvtwist.verify.check", str(bad)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(run.returncode, 1, run.stderr)
        self.assertEqual(run.stderr, "")
        self.assertIn("NOT linearizable: key 'k'", run.stdout)


class Durability(SynchronousTestCase):
    def test_last_acknowledged_write_present(self) -> None:
        """The final value of the last acknowledged write (or a concurrent one) is fine."""
        ops = [put(0, "a", 0, 1), put(0, "b", 2, 3), put(1, "c", 2.5, 4)]
        self.assertEqual(lost_writes(ops, {"k": "b"}), [])
        self.assertEqual(lost_writes(ops, {"k": "c"}), [])

    def test_overwritten_value_is_a_loss(self) -> None:
        """A final value older than the last acknowledged write is a lost write."""
        ops = [put(0, "a", 0, 1), put(0, "b", 2, 3)]
        [lost] = lost_writes(ops, {"k": "a"})
        self.assertEqual(lost.key, "k")
        self.assertEqual(lost.final, "a")
        self.assertEqual([o.value for o in lost.expected], ["b"])
        self.assertEqual(len(lost_writes(ops, {})), 1)

    def test_deletes_and_unknown_writes(self) -> None:
        """An acknowledged delete leaves the key absent; an unknown write may be last."""
        ops = [put(0, "a", 0, 1), delete(0, 2, 3), put(1, "z", 2.5, None, "unknown")]
        self.assertEqual(lost_writes(ops, {}), [])
        self.assertEqual(lost_writes(ops, {"k": "z"}), [])
        self.assertEqual(len(lost_writes(ops, {"k": "a"})), 1)
        self.assertEqual(lost_writes([put(0, "q", 0, None, "unknown")], {}), [])

    def test_longest_stall(self) -> None:
        """The longest gap between successful operations is measured."""
        ops = [get(0, None, 0, 1), get(0, None, 1, 2), get(0, None, 2, 9), get(1, None, 3, 4)]
        self.assertEqual(longest_stall(ops), (5.0, 4.0))
        self.assertEqual(longest_stall([]), (0.0, 0.0))


class Timeline(SynchronousTestCase):
    def test_page_is_self_contained(self) -> None:
        """The timeline embeds its data and loads nothing from the network."""
        d = tempfile.mkdtemp(prefix="kvtwist-verify-")
        self.addCleanup(shutil.rmtree, d, True)
        path = Path(d) / "timeline.html"
        ops = [put(0, "</script>", 0, 1), get(1, None, 0.5, None, "unknown")]
        events = [{"t": 0.7, "kind": "kill", "label": "kill head n1"}]
        write_timeline(path, ops, events, {"linearizable": True, "seed": 3})
        page = path.read_text()
        self.assertIn("kill head n1", page)
        self.assertIn("<canvas", page)
        self.assertNotIn("http://", page)
        self.assertNotIn("https://", page)
        self.assertEqual(page.count("</script>"), 1)
