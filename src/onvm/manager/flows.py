"""The manager's chains, rules and flow table: the authoritative copy and its region image.

Chains have names; chain 0 is ``default``.  Rules keep one slot in the region for
life; when a rule is added, removed or replaced, the slots whose cached flow
entries may now be wrong get a new generation (see onvm_flow.h): the rule
itself, and every rule of lower priority when a higher one arrives.  A sweep
thread removes expired and stale entries a slice of the table at a time.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable
from typing import Any

from onvm import _native
from onvm.constants import Action
from onvm.errors import ConfigError, OnvmError
from onvm.flows.chain import Hop, format_chain, parse_chain
from onvm.flows.keys import FlowKey
from onvm.flows.rules import Rule, parse_rule

MAX_CHAINS = _native.MAX_CHAINS
MAX_RULES = _native.MAX_RULES
SWEEP_INTERVAL = 0.1  # timeouts are exact at lookup; the sweep only frees entries and counts them
SWEEP_IDLE_INTERVAL = 1.0  # while the table is empty
SWEEP_SLICE = 1 << 14
ORIGINS = ("rule", "nf", "api")


class FlowRegistry:
    """Chains, rules and flows of one manager (all methods run under the manager's lock)."""

    def __init__(self, region: _native.Region, port_ok: Callable[[int], bool]) -> None:
        self.region = region
        self.port_ok = port_ok  # is this port an output?
        self.chains: dict[str, tuple[int, list[Hop]]] = {}
        self.rules: dict[int, tuple[Rule, int]] = {}  # id -> (rule, slot)
        self._order: list[tuple[int, int]] = []  # (-priority, id), the order rules are tried
        self._native: dict[int, dict[str, Any]] = {}  # id -> what the region takes
        self._free_slots = list(range(MAX_RULES - 1, -1, -1))
        self._next_rule = 1
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None

    # ---- chains ------------------------------------------------------------
    def set_default(self, hops: list[Hop]) -> None:
        self._publish_chain(0, "default", hops)

    def add_chain(self, name: str, spec: str) -> dict[str, Any]:
        if not name or len(name) > 23 or not name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"chain name '{name}': 1-23 letters, digits, - or _")
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
        users = [r.id for r, _ in self.rules.values() if r.chain == name]
        if users:
            raise OnvmError(f"chain {name} is used by rule(s) {', '.join(map(str, users))}", code="busy")
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

    def add_rules(self, texts: list[str]) -> list[dict[str, Any]]:
        """Add rules all together or none: every rule is checked before any is applied."""
        parsed = [parse_rule(t) for t in texts]
        for rule in parsed:
            if rule.chain not in self.chains:
                raise ConfigError(f"rule '{rule.text}': no chain named '{rule.chain}' "
                                  "(add it with onvm chain add)")
        if len(self.rules) + len(parsed) > MAX_RULES:
            raise OnvmError(f"at most {MAX_RULES} rules ({len(self.rules)} in place)", code="busy")
        if not parsed:
            return []
        top = max(r.priority for r in parsed)
        # New rules may claim flows that lower rules cached: those entries go.
        bump = [s for r, s in self.rules.values() if r.priority < top]
        out = []
        for rule in parsed:
            slot = self._free_slots.pop()
            rule.id = self._next_rule
            self._next_rule += 1
            self.rules[rule.id] = (rule, slot)
            self._native[rule.id] = rule.native(slot, self.chain_id(rule.chain))
            bisect.insort(self._order, (-rule.priority, rule.id))
            bump.append(slot)
            out.append({"id": rule.id, "slot": slot})
        self._publish_rules(bump)
        return out

    def del_rule(self, rule_id: int) -> dict[str, Any]:
        if rule_id not in self.rules:
            raise OnvmError(f"no rule with id {rule_id}", code="not_found")
        rule, slot = self.rules.pop(rule_id)
        self._order.remove((-rule.priority, rule_id))
        del self._native[rule_id]
        self._free_slots.append(slot)
        self._publish_rules([slot])
        return {"id": rule_id, "rule": rule.to_text()}

    def _publish_rules(self, bump: list[int]) -> None:
        self.region.set_rules([self._native[i] for _, i in self._order], bump)

    def _rule_dict(self, rule: Rule, slot: int, hits: int) -> dict[str, Any]:
        return {"id": rule.id, "priority": rule.priority, "rule": rule.to_text(), "chain": rule.chain,
                "slot": slot, "hits": hits}

    def list_rules(self) -> list[dict[str, Any]]:
        hits = self.region.rule_hits()
        return [self._rule_dict(self.rules[i][0], self.rules[i][1], hits.get(i, 0)) for _, i in self._order]

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
                        "origin": ORIGINS[f["origin"]] if f["origin"] < len(ORIGINS) else f["origin"],
                        "packets": f["packets"], "bytes": f["bytes"], "age_s": round(f["age_s"], 3),
                        "idle_s": round(f["idle_s"], 3), "idle_timeout": f["idle_ms"] / 1000,
                        "hard_timeout": f["hard_ms"] / 1000})
        return out

    def add_flow(self, key: FlowKey, chain: str, idle: float = 0.0, hard: float = 0.0,
                 origin: int = 2) -> dict[str, Any]:
        if idle < 0 or hard < 0:
            raise ConfigError("timeouts cannot be negative")
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

    def stats(self) -> dict[str, Any]:
        st: dict[str, Any] = self.region.flow_stats()
        st["chains"] = len(self.chains)
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
