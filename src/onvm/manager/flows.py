"""The manager's chains, rules and flow table: the authoritative copy and its region image.

Chains have names; chain 0 is ``default``.  A port may have a default chain of
its own, taken by what arrives on it and matches no rule.  Rules live in the
region's classifier (onvm_flow.h): each change (rules added, removed, or both
at once, and port defaults) is one call that the packet path sees whole, at
once, and that costs the same whatever the number of rules already in place.
Cached flow entries whose result a change may affect are checked again at
their flow's next packet, the others not at all.  A sweep thread removes
expired and outdated entries a slice of the table at a time.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, overload

from onvm import _native
from onvm.constants import FLOW_ORIGINS, Action
from onvm.errors import ConfigError, OnvmError
from onvm.flows.chain import MAX_PORTS, Hop, format_chain, parse_chain
from onvm.flows.explain import ServiceView, Situation
from onvm.flows.keys import FlowKey
from onvm.flows.rules import Rule, check_timeouts, parse_rule

MAX_CHAINS = _native.MAX_CHAINS
SWEEP_INTERVAL = 0.1  # timeouts are exact at lookup; the sweep only frees entries and counts them
SWEEP_IDLE_INTERVAL = 1.0  # while the table is empty
SWEEP_SLICE = 1 << 14
ORIGIN_NAMES = {v: k for k, v in FLOW_ORIGINS.items()}


class _OrderView(Sequence[Rule]):
    """The rules in the order they are tried, read where asked (a large set is not copied)."""

    def __init__(self, rules: dict[int, tuple[Rule, int]], order: list[tuple[int, int]]) -> None:
        self._rules, self._order = rules, order

    def __len__(self) -> int:
        return len(self._order)

    @overload
    def __getitem__(self, i: int) -> Rule: ...
    @overload
    def __getitem__(self, i: slice) -> list[Rule]: ...

    def __getitem__(self, i: int | slice) -> Rule | list[Rule]:
        if isinstance(i, slice):
            return [self._rules[rid][0] for _, rid in self._order[i]]
        return self._rules[self._order[i][1]][0]


class FlowRegistry:
    """Chains, rules and flows of one manager (all methods run under the manager's lock)."""

    def __init__(self, region: _native.Region, port_ok: Callable[[int], bool]) -> None:
        self.region = region
        self.port_ok = port_ok  # is this port an output?
        self.chains: dict[str, tuple[int, list[Hop]]] = {}
        self.rules: dict[int, tuple[Rule, int]] = {}  # id -> (rule, slot)
        self._by_slot: dict[int, int] = {}  # slot -> id: what the packet path names, back to its rule
        self.port_chains: dict[int, str] = {}  # input port -> its default chain
        self.chain_rules: Counter[str] = Counter()  # chain name -> rules that use it
        self._order: list[tuple[int, int]] = []  # (-priority, id), the order rules are tried
        self._next_rule = 1
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None

    # ---- chains ------------------------------------------------------------
    def set_default(self, hops: list[Hop]) -> None:
        self._publish_chain(0, "default", hops)

    def add_chain(self, name: str, spec: str) -> dict[str, Any]:
        if not name or len(name) > 23 or not name.isascii() \
                or not name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"chain name '{name}': 1-23 ASCII letters, digits, - or _")
        try:
            hops = parse_chain(spec)
        except ConfigError as e:
            raise ConfigError(f"chain {name} '{spec}': {e.message}") from None
        for h in hops:
            if h.action == Action.OUT and not self.port_ok(h.dest):
                raise ConfigError(f"chain {name} '{spec}': port {h.dest} is not an output port")
        if name in self.chains:
            cid = self.chains[name][0]
        else:
            used = {c for c, _ in self.chains.values()}
            cid = next((i for i in range(1, MAX_CHAINS) if i not in used), 0)
            if not cid:
                raise OnvmError(f"all {MAX_CHAINS - 1} chains are in use", code="busy")
        self._publish_chain(cid, name, hops)
        return {"id": cid, "name": name, "hops": format_chain(hops)}

    def _publish_chain(self, cid: int, name: str, hops: list[Hop]) -> None:
        self.region.set_chain(cid, [h.as_tuple() for h in hops], name)
        self.chains[name] = (cid, hops)

    def del_chain(self, name: str) -> dict[str, Any]:
        if name == "default":
            raise ConfigError("the default chain cannot be deleted")
        if name not in self.chains:
            raise OnvmError(f"no chain named '{name}'", code="not_found")
        if self.chain_rules[name]:
            users = [r.id for r, _ in self.rules.values() if r.chain == name]
            more = f" and {len(users) - 10} more" if len(users) > 10 else ""
            shown = ", ".join(map(str, users[:10])) + more
            raise OnvmError(f"chain {name} is used by rule(s) {shown}", code="busy")
        ports = sorted(p for p, c in self.port_chains.items() if c == name)
        if ports:
            raise OnvmError(f"chain {name} is the default of port(s) {', '.join(map(str, ports))}",
                            code="busy")
        cid, _ = self.chains.pop(name)
        flushed = self.region.flow_flush(cid)
        self.region.set_chain(cid, [], "")
        return {"name": name, "flows_removed": flushed}

    def chain_id(self, name: str) -> int:
        if name not in self.chains:
            raise OnvmError(f"no chain named '{name}'", code="not_found")
        return self.chains[name][0]

    def list_chains(self) -> list[dict[str, Any]]:
        """Chains with their drops per hop: early (at RX, the hop was congested or had no
        instance) and late (after the hop's NF handled the packet)."""
        return [{"id": cid, "name": name, "hops": format_chain(hops),
                 "drops": [{"early": e, "late": late} for e, late in self.region.chain_drops(cid)]}
                for name, (cid, hops) in sorted(self.chains.items(), key=lambda kv: kv[1][0])]

    # ---- rules -------------------------------------------------------------
    def add_rule(self, text: str) -> dict[str, Any]:
        rid = self.add_rules([text])[0]["id"]
        rule, slot = self.rules[rid]
        return self._rule_dict(rule, slot, 0)

    def add_rules(self, texts: Iterable[str | Rule]) -> list[dict[str, Any]]:
        """Add rules all together or none: every rule is checked before any is applied."""
        return self.change(texts, [])

    def room(self) -> int:
        """How many more rules fit (the region reserves room for ``--max-rules``)."""
        return int(self.region.rules_stats()["max_rules"]) - len(self.rules)

    def parse(self, texts: Iterable[str | Rule]) -> list[Rule]:
        """Rules from texts (or parsed already), each checked against the chains there are."""
        parsed = [t if isinstance(t, Rule) else parse_rule(t) for t in texts]
        for rule in parsed:
            if rule.chain not in self.chains:
                raise ConfigError(f"rule '{rule.text or rule.to_text()}': no chain named '{rule.chain}' "
                                  "(add it with onvm chain add)")
        return parsed

    def change(self, adds: Iterable[str | Rule], del_ids: Iterable[int]) -> list[dict[str, Any]]:
        """Remove the rules del_ids and add adds in one change the packet path sees at once.

        All or nothing: a bad rule, an unknown id or a full classifier applies nothing."""
        parsed = self.parse(adds)
        dels = list(dict.fromkeys(del_ids))
        for rid in dels:
            if rid not in self.rules:
                raise OnvmError(f"no rule with id {rid}", code="not_found")
        if not parsed and not dels:
            return []
        first = self._next_rule
        for i, rule in enumerate(parsed):
            rule.id = first + i
        try:
            slots = self.region.rules_apply(adds=[r.native(self.chain_id(r.chain)) for r in parsed],
                                            dels=[self.rules[rid][1] for rid in dels])
        except MemoryError as e:
            raise OnvmError(str(e), code="busy") from None
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self._next_rule = first + len(parsed)
        for rid in dels:
            rule, slot = self.rules.pop(rid)
            del self._by_slot[slot]
            self.chain_rules[rule.chain] -= 1
            del self._order[bisect.bisect_left(self._order, (-rule.priority, rid))]
        if len(parsed) > 64:
            self._order = sorted(self._order + [(-r.priority, r.id) for r in parsed])
        else:
            for rule in parsed:
                bisect.insort(self._order, (-rule.priority, rule.id))
        out = []
        for rule, slot in zip(parsed, slots, strict=True):
            self.rules[rule.id] = (rule, slot)
            self._by_slot[slot] = rule.id
            self.chain_rules[rule.chain] += 1
            out.append({"id": rule.id, "slot": slot})
        return out

    def rule_in_slot(self, slot: int) -> Rule | None:
        """The rule the classifier keeps in ``slot`` (traces and the classifier name rules so)."""
        rid = self._by_slot.get(slot)
        return None if rid is None else self.rules[rid][0]

    def del_rule(self, rule_id: int) -> dict[str, Any]:
        text = self.rules[rule_id][0].to_text() if rule_id in self.rules else ""
        self.change([], [rule_id])  # refuses an unknown id
        return {"id": rule_id, "rule": text}

    def _rule_dict(self, rule: Rule, slot: int, hits: int) -> dict[str, Any]:
        return {"id": rule.id, "priority": rule.priority, "rule": rule.to_text(), "chain": rule.chain,
                "slot": slot, "hits": hits}

    def list_rules(self, offset: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """Rules in the order they are tried, from ``offset``, at most ``limit`` of them."""
        page = self._order[offset:None if limit is None else offset + limit]
        entries = [self.rules[rid] for _, rid in page]
        hits = self.region.rule_hits([slot for _, slot in entries])
        return [self._rule_dict(rule, slot, h) for (rule, slot), h in zip(entries, hits, strict=True)]

    def set_port_chain(self, port: int, chain: str | None) -> dict[str, Any]:
        """Give input port ``port`` a default chain of its own (None: the default chain again)."""
        if not 0 <= port < MAX_PORTS:
            raise ConfigError(f"port {port} is out of range (0..{MAX_PORTS - 1})")
        cid = 0 if chain is None else self.chain_id(chain)
        self.region.rules_apply(ports=[(port, cid)])
        if chain is None or cid == 0:
            self.port_chains.pop(port, None)
        else:
            self.port_chains[port] = chain
        return {"port": port, "chain": chain or "default"}

    def set_flow_idle(self, seconds: float) -> None:
        """The idle timeout of cached results whose rule names none (default 10 s)."""
        check_timeouts(seconds, 0)
        self.region.set_flow_idle(round(seconds * 1000))

    # ---- flows -------------------------------------------------------------
    def _chain_names(self) -> dict[int, str]:
        return {cid: name for name, (cid, _) in self.chains.items()}

    def list_flows(self, limit: int = 1000, chain: str | None = None) -> list[dict[str, Any]]:
        cid = self.chain_id(chain) if chain else -1
        names = self._chain_names()
        out = []
        for f in self.region.flow_list(limit, cid):
            key = FlowKey.from_native(f["key"])
            out.append({"flow": str(key), "chain": names.get(f["chain"], str(f["chain"])),
                        "origin": ORIGIN_NAMES.get(f["origin"], f["origin"]),
                        "packets": f["packets"], "bytes": f["bytes"], "age_s": round(f["age_s"], 3),
                        "idle_s": round(f["idle_s"], 3), "idle_timeout": f["idle_ms"] / 1000,
                        "hard_timeout": f["hard_ms"] / 1000})
        return out

    def add_flow(self, key: FlowKey, chain: str, idle: float = 0.0, hard: float = 0.0,
                 origin: int = FLOW_ORIGINS["api"]) -> dict[str, Any]:
        check_timeouts(idle, hard)
        try:
            self.region.flow_put(key.native(), self.chain_id(chain), int(idle * 1000), int(hard * 1000),
                                 origin)
        except MemoryError as e:
            raise OnvmError(str(e), code="busy") from None
        return {"flow": str(key), "chain": chain}

    def del_flow(self, key: FlowKey) -> dict[str, Any]:
        if not self.region.flow_del(key.native()):
            raise OnvmError(f"no flow {key}", code="not_found")
        return {"flow": str(key)}

    def flush_flows(self, chain: str | None = None, cached_only: bool = True) -> dict[str, Any]:
        """Remove the cached results (``cached_only``) or every entry, of ``chain`` or of all chains."""
        removed = self.region.flow_flush(-1 if chain is None else self.chain_id(chain), cached_only)
        return {"removed": removed}

    def situation(self, key: FlowKey, service: Callable[[int, int], ServiceView]) -> Situation:
        """What decides the path of ``key``'s packets now (``onvm flow explain``)."""
        entry = self.region.flow_get(key.native())
        if entry is not None:
            entry["origin"] = ORIGIN_NAMES.get(entry["origin"], str(entry["origin"]))
        # The classifier finds the first rule that matches (a walk of millions of rules in Python
        # would hold the manager's lock for seconds); its place in the order is a bisection.
        slot, _ = self.region.rule_lookup(key.native())
        rule = self.rule_in_slot(slot)
        first = -1 if rule is None else bisect.bisect_left(self._order, (-rule.priority, rule.id))
        return Situation(rules=_OrderView(self.rules, self._order),
                         chains={cid: (name, hops) for name, (cid, hops) in self.chains.items()},
                         port_chains={p: self.chains[c][0] for p, c in self.port_chains.items()},
                         entry=entry, service=service, first=first)

    def stats(self) -> dict[str, Any]:
        st: dict[str, Any] = self.region.flow_stats()
        st["chains"] = len(self.chains)
        st["default_idle_s"] = st.pop("default_idle_ms") / 1000
        cls = self.region.rules_stats()
        st["classifier"] = {k: cls[k] for k in ("max_rules", "tuples", "groups", "slots", "version", "bytes")}
        return st

    # ---- expiry ------------------------------------------------------------
    def start_sweeper(self) -> None:
        self._sweeper = threading.Thread(target=self._sweep, name="onvm-flow-sweep", daemon=True)
        self._sweeper.start()

    def stop_sweeper(self) -> None:
        self._stop.set()
        if self._sweeper:
            self._sweeper.join(timeout=2)

    def _sweep(self) -> None:
        size = self.region.flow_stats()["size"]
        pos, wait = 0, SWEEP_INTERVAL
        while size and not self._stop.wait(wait):
            if self.region.flow_stats()["used"] <= 0:
                wait = SWEEP_IDLE_INTERVAL  # an empty table costs nothing to keep: look less often
                continue
            wait = SWEEP_INTERVAL
            self.region.flow_expire(pos, SWEEP_SLICE)
            pos = (pos + SWEEP_SLICE) % size
