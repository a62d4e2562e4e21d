"""The performance floors: one table, checked against the results of every run.

A floor compares one figure of a run with a limit.  Throughput floors are
ratios measured in the same run (the machine is shared and noisy, so a
figure is only compared with a reference measured beside it).  A floor whose
figure the run did not measure (``--only``) is *not measured*, neither met nor
missed.  ``benchmarks/run.py`` prints the verdicts, puts them at the top of
the report, and exits 1 when one is missed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

Results = dict[str, Any]
Getter = Callable[[Results], float | None]


@dataclass(frozen=True)
class Floor:
    """``value(results)`` must be at least (``at_most`` False) or at most ``limit``."""

    id: str  # how the report's section tables find their floor
    section: int
    name: str  # may name {large} and {small}: the tree sizes of the run
    at_most: bool
    limit: float | Getter  # a getter when the limit depends on the run
    unit: str
    value: Getter
    spec: str = ".2f"

    def label(self, results: Results) -> str:
        t = results.get("tree", {})
        return self.name.format(
            large=f"{t.get('large', 10**6):,d}", small=f"{t.get('small', 1000):,d}"
        )

    def limit_in(self, results: Results) -> float | None:
        return self.limit(results) if callable(self.limit) else self.limit


@dataclass(frozen=True)
class Verdict:
    floor: Floor
    label: str
    value: float | None
    limit: float | None
    met: bool | None  # None: not measured in this run

    @property
    def measured(self) -> str:
        return "—" if self.value is None else f"{self.value:{self.floor.spec}}{self.floor.unit}"

    @property
    def bound(self) -> str:
        if self.limit is None:
            return "—"
        limit = f"{self.limit:.1f}".removesuffix(".0")
        return f"{'≤' if self.floor.at_most else '≥'} {limit}{self.floor.unit}"

    @property
    def word(self) -> str:
        return "not measured" if self.met is None else ("met" if self.met else "MISSED")


def _path(results: Results, *keys: str) -> Any:
    x: Any = results
    for k in keys:
        if not isinstance(x, dict) or k not in x:
            return None
        x = x[k]
    return x


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) else None


def tree_ratio(order: str, op: str) -> Getter:
    """Cost per op at the run's largest tree over the cost at its smallest."""
    return lambda r: _num(_path(r, "tree", "ratios", f"{order} {op}"))


def tree_cost_us(order: str, op: str) -> Getter:
    def get(r: Results) -> float | None:
        t = r.get("tree")
        if not t:
            return None
        for row in t["rows"]:
            if row["order"] == order and row["n"] == t["large"]:
                return float(row[f"{op}_ns"]) / 1000
        return None

    return get


def ratio(section: str, row: str, side: str) -> Getter:
    """Throughput of ``side`` over the row's reference side, from one comparison."""
    return lambda r: _num(_path(r, section, row, "ratios", side))


def p50_ratio(section: str, row: str, side: str, reference: str) -> Getter:
    def get(r: Results) -> float | None:
        a = _num(_path(r, section, row, side, "p50_us"))
        b = _num(_path(r, section, row, reference, "p50_us"))
        return a / b if a is not None and b else None

    return get


def mode_ratio(row: str, mode: str, base: str) -> Getter:
    """PUT throughput of a node in one storage mode over one in another (section 2's runs)."""

    def get(r: Results) -> float | None:
        a = _num(_path(r, "node", row, mode, "throughput"))
        b = _num(_path(r, "node", row, base, "throughput"))
        return a / b if a is not None and b else None

    return get


def field(*keys: str) -> Getter:
    return lambda r: _num(_path(r, *keys))


def _failover_limit(r: Results) -> float | None:
    st = _num(_path(r, "failover", "session_timeout_s"))
    return None if st is None else st + 1.0


def _joined_over_raw(r: Results) -> float | None:
    m = r.get("memory") or {}
    if "joiner_per_key" not in m:
        return None
    return float(m["joiner_per_key"] - m["raw_per_key"])


def _node_floors() -> Iterable[Floor]:
    for setting, limit in (("32×1", 0.5), ("4×32", 0.2)):
        row = f"GET {setting}"
        yield Floor(
            f"node:{row}:in-memory",
            2,
            f"node / reference, {row} req/s",
            False,
            limit,
            "×",
            ratio("node", row, "in-memory"),
        )
        row = f"PUT {setting}"
        for mode in ("in-memory", "fsync interval"):
            yield Floor(
                f"node:{row}:{mode}",
                2,
                f"node ({mode}) / reference, {row} req/s",
                False,
                limit,
                "×",
                ratio("node", row, mode),
            )
    for row, modes in (("GET 1×1", ("in-memory",)), ("PUT 1×1", ("in-memory", "fsync interval"))):
        for mode in modes:
            yield Floor(
                f"node-p50:{row}:{mode}",
                2,
                f"node ({mode}) p50 / reference p50, {row}",
                True,
                1.5,
                "×",
                p50_ratio("node", row, mode, "reference"),
            )


def _chain_floors() -> Iterable[Floor]:
    for setting in ("32×1", "4×32"):
        yield Floor(
            f"chain:PUT {setting}:chain",
            3,
            f"chain of 3 / standalone, PUT {setting} req/s",
            False,
            0.6,
            "×",
            ratio("chain", f"PUT {setting}", "chain"),
        )
        yield Floor(
            f"chain:GET {setting}:chain",
            3,
            f"chain of 3 (GET at the tail) / standalone, GET {setting} req/s",
            False,
            0.9,
            "×",
            ratio("chain", f"GET {setting}", "chain"),
        )


def _cluster_floors() -> Iterable[Floor]:
    """Section 10: more servers serve more; the routing of a cluster client costs little."""
    for setting in ("32×1", "4×32"):
        for op in ("PUT", "GET"):
            side = "2 servers, 2 shards, R=1"
            yield Floor(
                f"cluster:scale R=1:{op} {setting}:{side}",
                10,
                f"cluster R=1, 2 servers / 1 server, {op} {setting} req/s",
                False,
                1.4,
                "×",
                lambda r, op=op, setting=setting, side=side: _num(
                    _path(r, "cluster", "scale R=1", f"{op} {setting}", "ratios", side)
                ),
            )
        side = "3 servers, 3 shards, R=3"
        yield Floor(
            f"cluster:scale R=3:PUT {setting}:{side}",
            10,
            f"cluster of 3 servers, R=3, 3 shards / one chain of 3, PUT {setting} req/s",
            False,
            1.5,
            "×",
            lambda r, setting=setting, side=side: _num(
                _path(r, "cluster", "scale R=3", f"PUT {setting}", "ratios", side)
            ),
        )
        for op in ("PUT", "GET"):
            side = "1 server, 1 shard, R=1"
            yield Floor(
                f"cluster:routing:{op} {setting}:{side}",
                10,
                f"cluster of one shard / a chain of one, {op} {setting} req/s",
                False,
                0.9,
                "×",
                lambda r, op=op, setting=setting, side=side: _num(
                    _path(r, "cluster", "routing", f"{op} {setting}", "ratios", side)
                ),
            )


#: Every floor, in the report's order.  Sections: 1 tree, 2 node against the
#: reference server, 3 chain, 4 failover, 5 join, 6 memory, 7 durability.
FLOORS: tuple[Floor, ...] = (
    Floor(
        "tree:random get",
        1,
        "tree: random get at {large} keys / at {small}",
        True,
        3.0,
        "×",
        tree_ratio("random", "get"),
    ),
    Floor(
        "tree:random insert:us",
        1,
        "tree: random insert at {large} keys",
        True,
        10.0,
        " µs",
        tree_cost_us("random", "insert"),
    ),
    *(
        Floor(
            f"tree:{order} {op}",
            1,
            f"tree: {order} {op} at {{large}} keys / at {{small}}",
            True,
            2.5,
            "×",
            tree_ratio(order, op),
        )
        for order, op in (
            ("random", "replace"),
            ("sequential", "insert"),
            ("sequential", "get"),
            ("sequential", "replace"),
        )
    ),
    Floor(
        "tree:height",
        1,
        "tree: height at {large} sequential keys (limit: the AVL bound)",
        True,
        field("tree", "avl_bound"),
        "",
        field("tree", "height_seq"),
        ".0f",
    ),
    *_node_floors(),
    *_chain_floors(),
    *(
        Floor(
            f"failover:{victim}",
            4,
            f"failover after killing the {victim} (limit: session timeout + 1 s)",
            True,
            _failover_limit,
            " s",
            field("failover", victim, "failover_s"),
        )
        for victim in ("head", "tail")
    ),
    Floor("join", 5, "join of a loaded chain", True, 20.0, " s", field("join", "join_s"), ".1f"),
    Floor(
        "memory:node",
        6,
        "memory of a client-written node over the raw bytes",
        True,
        250.0,
        " B/key",
        field("memory", "overhead_per_key"),
        ".0f",
    ),
    Floor(
        "memory:joined",
        6,
        "memory of a joined node over the raw bytes",
        True,
        250.0,
        " B/key",
        _joined_over_raw,
        ".0f",
    ),
    *(
        Floor(
            f"durability:interval:{setting}",
            7,
            f"PUT {setting} req/s, --fsync interval / --in-memory",
            False,
            0.7,
            "×",
            mode_ratio(f"PUT {setting}", "fsync interval", "in-memory"),
        )
        for setting in ("32×1", "4×32")
    ),
    Floor(
        "durability:recovery",
        7,
        "recovery of a snapshot and a log",
        True,
        10.0,
        " s",
        field("durability", "recovery", "recovery_s"),
    ),
    *_cluster_floors(),
)


def check(results: Results, floors: Iterable[Floor] = FLOORS) -> list[Verdict]:
    """Every floor's verdict on ``results`` (the ``results`` of a run's JSON)."""
    out = []
    for f in floors:
        value = f.value(results)
        limit = f.limit_in(results)
        met: bool | None = None
        if value is not None and limit is not None:
            met = value <= limit if f.at_most else value >= limit
        out.append(Verdict(f, f.label(results), value, limit, met))
    return out


def exit_status(verdicts: Iterable[Verdict]) -> int:
    """1 when a floor was missed, else 0 (a floor not measured misses nothing)."""
    return 1 if any(v.met is False for v in verdicts) else 0


def by_id(verdicts: Iterable[Verdict]) -> dict[str, Verdict]:
    return {v.floor.id: v for v in verdicts}


def table(verdicts: Iterable[Verdict]) -> list[str]:
    """The verdicts as markdown table lines."""
    lines = ["| § | floor | measured | limit | |", "|---:|---|---:|---:|---|"]
    for v in verdicts:
        word = f"**{v.word}**" if v.met is not None else v.word
        lines.append(f"| {v.floor.section} | {v.label} | {v.measured} | {v.bound} | {word} |")
    return lines


def terminal(verdicts: Iterable[Verdict]) -> list[str]:
    """The verdicts as aligned plain-text lines."""
    vs = list(verdicts)
    width = max((len(v.label) for v in vs), default=0)
    return [
        f"  {v.word:<12s} {v.floor.section}. {v.label:<{width}s}  {v.measured:>12s}  {v.bound}"
        for v in vs
    ]
