"""The manager's half of the operations table: one handler per operation.

Theory of operation
-------------------
Every operation (``onvm.control.ops``) reaches the manager through
:meth:`Handlers.call`, whoever asks: the control server decodes a request
into its operation object and calls it with the connection as the caller
(:meth:`Handlers.on_request`); parts of the manager itself, the OpenFlow
agent for one, call it with :data:`INTERNAL`.  ``call`` takes the one lock
that serializes changes to the registry, the chains and the rules, refuses
an NF-only operation from a connection that registered no NF, and runs the
handler registered for the operation's class.  A handler returns the reply's
result (a JSON object); an ``OnvmError`` it raises becomes the error reply.

Handlers are methods decorated with ``@handles(ops.X)``; the test of the
operations table checks that every operation has one.  Each works through
the collaborators it is given: the NFs and their connections (``nfs.py``),
the chains, rules and flows (``flows.py``), the services (``services.py``)
and the status view; none holds the manager.
"""

from __future__ import annotations

import base64
import binascii
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from onvm import _native
from onvm.constants import Action
from onvm.control import ops
from onvm.control.protocol import PROTOCOL_VERSION, Request
from onvm.errors import ConfigError, OnvmError
from onvm.flows.chain import Hop
from onvm.flows.explain import Instance, ServiceView, explain, packet_of
from onvm.flows.keys import FlowKey
from onvm.flows.rules import Rule, parse_rules
from onvm.manager.captures import Captures
from onvm.manager.dataplane import DataPlane
from onvm.manager.flows import FlowRegistry
from onvm.manager.nfs import Caller, NFs
from onvm.manager.services import POLICY_NAMES, Services, parse_policy
from onvm.manager.traces import Names, Traces
from onvm.ports.uri import rate_text

__all__ = ["HANDLERS", "INTERNAL", "Handlers", "handles"]

_O = TypeVar("_O", bound=ops.Op)
Handler = Callable[["Handlers", Caller, Any], dict[str, Any]]
HANDLERS: dict[type[ops.Op], Handler] = {}


def handles(op: type[_O]) -> Callable[[Callable[[Handlers, Caller, _O], dict[str, Any]]],
                                        Callable[[Handlers, Caller, _O], dict[str, Any]]]:
    """Register a method of Handlers as the handler of ``op``."""

    def deco(fn: Callable[[Handlers, Caller, _O], dict[str, Any]]) -> Callable[[Handlers, Caller, _O],
                                                                                    dict[str, Any]]:
        HANDLERS[op] = fn
        return fn

    return deco


class _Internal:
    """The caller for requests made inside the manager."""

    pid = 0
    data: dict[str, Any] = {}

    def send_event(self, name: str, data: dict[str, Any] | None = None) -> bool:
        return False

    def close(self) -> None:
        pass


INTERNAL: Caller = _Internal()


class Handlers:
    """Runs operations against one manager's parts (see the module docstring).

    ``status`` returns the manager's status; ``stopping`` is set to stop the
    manager.  With ``hold_input``, input ports wait until every service of
    ``default_chain`` and of the other chains runs."""

    def __init__(self, *, name: str, nfs: NFs, flows: FlowRegistry, services: Services, dataplane: DataPlane,
                 lock: threading.RLock, log: Callable[[str], None], status: Callable[[], dict[str, Any]],
                 stopping: threading.Event, default_chain: list[Hop], hold_input: bool) -> None:
        self.name = name
        self.nfs = nfs
        self.flows = flows
        self.services = services
        self.dp = dataplane
        self.lock = lock
        self.log = log
        self.status = status
        self.stopping = stopping  # set to stop the manager
        self.packet_in_sink: Callable[[bytes, int, int], bool] | None = None  # the OpenFlow agent's
        self.default_chain = default_chain
        self.held = hold_input and bool(self._chain_services())
        self.captures = Captures(dataplane, lambda s: [r.nf_id for r in nfs.registry.running(s)], lock, log)
        names = Names(rule=self._rule_text, chain=self._chain_name, nf=self._nf_name)
        self.traces = Traces(dataplane.native, names)

    def call(self, op: ops.Op, caller: Caller = INTERNAL) -> dict[str, Any]:
        """Run one operation for ``caller``."""
        handler = HANDLERS.get(type(op))
        if handler is None:
            raise ConfigError(f"unknown operation '{op.op_name}'")
        with self.lock:
            if op.nf_only:
                self.nfs.of(caller)  # raises for a connection without an NF
            return handler(self, caller, op)

    def on_request(self, conn: Caller, req: Request) -> dict[str, Any]:
        """The control server's entry: decode, then :meth:`call`."""
        return self.call(ops.decode(req.op, req.args), conn)

    def on_close(self, conn: Caller) -> None:
        self.captures.closed(conn)
        with self.lock:
            self.nfs.closed(conn)

    def _chain_services(self) -> set[int]:
        """Services named by the default chain and the chains there are (an OpenFlow
        controller's included, when it made them before the NFs came)."""
        hops = list(self.default_chain) + [h for _, chain in self.flows.chains.values() for h in chain]
        return {h.dest for h in hops if h.action == Action.TONF}

    # ---- the manager and its NFs ---------------------------------------------
    @handles(ops.Hello)
    def hello(self, caller: Caller, req: ops.Hello) -> dict[str, Any]:
        return {"protocol": PROTOCOL_VERSION, "layout": _native.LAYOUT_VERSION, "name": self.name,
                "pid": os.getpid()}

    @handles(ops.Status)
    def get_status(self, caller: Caller, req: ops.Status) -> dict[str, Any]:
        return self.status()

    @handles(ops.Shutdown)
    def shutdown(self, caller: Caller, req: ops.Shutdown) -> dict[str, Any]:
        self.log("asked to stop")
        self.stopping.set()
        return {"stopping": True}

    @handles(ops.Register)
    def register(self, caller: Caller, req: ops.Register) -> dict[str, Any]:
        if self.stopping.is_set():
            raise OnvmError("the manager is shutting down", code="busy")
        rec = self.nfs.register(caller, req)
        return {"cpu": rec.cpu, "nf_id": rec.nf_id, "service": rec.service, "instance": rec.instance,
                "region": self.dp.region.path}

    @handles(ops.Start)
    def start(self, caller: Caller, req: ops.Start) -> dict[str, Any]:
        rec = self.nfs.start(caller)
        if self.held and self._chain_services() <= self.nfs.registry.running_services():
            self.held = False
            self.dp.pause_input(False)
            self.log("every service of the chains runs: input ports start")
        return {"state": rec.state.value}

    @handles(ops.Stopping)
    def stopping_nf(self, caller: Caller, req: ops.Stopping) -> dict[str, Any]:
        return {"state": self.nfs.stopping(caller).state.value}

    @handles(ops.StopNF)
    def stop_nf(self, caller: Caller, req: ops.StopNF) -> dict[str, Any]:
        rec = self.nfs.registry.get(req.nf_id)
        self.nfs.stop(rec, strict=True)
        return {"state": rec.state.value}

    @handles(ops.Subscribe)
    def subscribe(self, caller: Caller, req: ops.Subscribe) -> dict[str, Any]:
        self.nfs.subscribe(caller, req.nf_id)
        return {"nf_id": req.nf_id}

    @handles(ops.Send)
    def send(self, caller: Caller, req: ops.Send) -> dict[str, Any]:
        return self.nfs.send(caller, req)

    # ---- services ------------------------------------------------------------
    @handles(ops.ServiceList)
    def service_list(self, caller: Caller, req: ops.ServiceList) -> dict[str, Any]:
        return {"services": self.services.describe()}

    @handles(ops.ServicePolicy)
    def service_policy(self, caller: Caller, req: ops.ServicePolicy) -> dict[str, Any]:
        registry = self.nfs.registry
        self.dp.publish(registry.set_policy(req.service, parse_policy(req.policy)))
        name = POLICY_NAMES[registry.policy_of(req.service)]
        self.log(f"service {req.service}: policy {name}")
        return {"service": req.service, "policy": name}

    @handles(ops.Scale)
    def scale(self, caller: Caller, req: ops.Scale) -> dict[str, Any]:
        service = req.service if req.service is not None else self.nfs.of(caller).service
        return self.services.scale(service, req.count)

    # ---- chains, rules and flows ---------------------------------------------
    @handles(ops.ChainAdd)
    def chain_add(self, caller: Caller, req: ops.ChainAdd) -> dict[str, Any]:
        return self.flows.add_chain(req.name, req.hops)

    @handles(ops.ChainList)
    def chain_list(self, caller: Caller, req: ops.ChainList) -> dict[str, Any]:
        return {"chains": self.flows.list_chains()}

    @handles(ops.ChainDel)
    def chain_del(self, caller: Caller, req: ops.ChainDel) -> dict[str, Any]:
        return self.flows.del_chain(req.name)

    @handles(ops.RuleAdd)
    def rule_add(self, caller: Caller, req: ops.RuleAdd) -> dict[str, Any]:
        if req.rules is not None:
            added = self.flows.add_rules(req.rules)
            return {"added": len(added), "ids": [r["id"] for r in added], "slots": [r["slot"] for r in added]}
        assert req.rule is not None  # RuleAdd.check
        return self.flows.add_rule(req.rule)

    @handles(ops.RuleLoad)
    def rule_load(self, caller: Caller, req: ops.RuleLoad) -> dict[str, Any]:
        """A part of a rule set kept on the caller's connection until the part that commits it."""
        staged: list[Rule] | None = [] if req.begin else caller.data.get("rule_load")
        if staged is None:
            raise ConfigError("rule_load: no rule set is under way on this connection (begin one)")
        caller.data["rule_load"] = staged
        try:
            staged += self.flows.parse(parse_rules(req.rules, req.line))
            room = self.flows.room()
            if len(staged) > room:  # refused as it comes: a client cannot pile up what cannot fit
                raise OnvmError(f"rule set: {len(staged)} rules so far, room for {room} more (--max-rules)",
                                code="busy")
            added = self.flows.add_rules(staged) if req.commit else None
        except (ConfigError, OnvmError):
            del caller.data["rule_load"]  # a bad part ends the set: nothing of it applies
            raise
        if added is None:
            return {"staged": len(staged)}
        del caller.data["rule_load"]
        ids = [r["id"] for r in added]
        return {"added": len(ids), "first_id": ids[0] if ids else None, "last_id": ids[-1] if ids else None}

    @handles(ops.RuleChange)
    def rule_change(self, caller: Caller, req: ops.RuleChange) -> dict[str, Any]:
        added = self.flows.change(req.add or [], req.delete or [])
        return {"ids": [r["id"] for r in added], "slots": [r["slot"] for r in added],
                "removed": len(set(req.delete or []))}

    @handles(ops.RuleList)
    def rule_list(self, caller: Caller, req: ops.RuleList) -> dict[str, Any]:
        return {"rules": self.flows.list_rules(req.offset, req.limit), "total": len(self.flows.rules),
                "offset": req.offset}

    @handles(ops.PortChain)
    def port_chain(self, caller: Caller, req: ops.PortChain) -> dict[str, Any]:
        if req.port >= len(self.dp.ports):
            raise ConfigError(f"port {req.port}: the manager has {len(self.dp.ports)} ports")
        return self.flows.set_port_chain(req.port, req.chain)

    @handles(ops.PortRate)
    def port_rate(self, caller: Caller, req: ops.PortRate) -> dict[str, Any]:
        out = self.dp.set_port_rate(req.port, req.pps)
        self.log(f"port {req.port}: {rate_text(req.pps)}")
        return out

    @handles(ops.RuleDel)
    def rule_del(self, caller: Caller, req: ops.RuleDel) -> dict[str, Any]:
        return self.flows.del_rule(req.id)

    @handles(ops.FlowList)
    def flow_list(self, caller: Caller, req: ops.FlowList) -> dict[str, Any]:
        return {"flows": self.flows.list_flows(req.limit, req.chain)}

    @handles(ops.FlowAdd)
    def flow_add(self, caller: Caller, req: ops.FlowAdd) -> dict[str, Any]:
        return self.flows.add_flow(FlowKey.parse(req.flow), req.chain, req.idle, req.hard)

    @handles(ops.FlowDel)
    def flow_del(self, caller: Caller, req: ops.FlowDel) -> dict[str, Any]:
        return self.flows.del_flow(FlowKey.parse(req.flow))

    @handles(ops.FlowFlush)
    def flow_flush(self, caller: Caller, req: ops.FlowFlush) -> dict[str, Any]:
        return self.flows.flush_flows(req.chain, req.cached_only)

    @handles(ops.FlowExplain)
    def flow_explain(self, caller: Caller, req: ops.FlowExplain) -> dict[str, Any]:
        key, flow_hash = packet_of(FlowKey.parse(req.flow))
        return explain(key, flow_hash, self.flows.situation(key, self._service_view))

    def _service_view(self, service: int, flow_hash: int) -> ServiceView:
        registry = self.nfs.registry
        policy = POLICY_NAMES[registry.policy_of(service)]
        running = [Instance(r.nf_id, r.instance, r.name) for r in registry.running(service)]
        pick = None
        if running and policy not in ("round-robin", "local"):  # theirs depends on who sends
            pick = self.dp.region.pick(service, flow_hash) or None
        return ServiceView(policy, running, pick)

    @handles(ops.FlowStats)
    def flow_stats(self, caller: Caller, req: ops.FlowStats) -> dict[str, Any]:
        return self.flows.stats()

    # ---- captures ---------------------------------------------------------------
    @handles(ops.CaptureStart)
    def capture_start(self, caller: Caller, req: ops.CaptureStart) -> dict[str, Any]:
        return self.captures.start(caller, req)

    @handles(ops.CaptureStop)
    def capture_stop(self, caller: Caller, req: ops.CaptureStop) -> dict[str, Any]:
        return self.captures.stop(caller, req.id)

    @handles(ops.TraceAdd)
    def trace_add(self, caller: Caller, req: ops.TraceAdd) -> dict[str, Any]:
        return self.traces.add(req.count, req.filter)

    @handles(ops.TraceShow)
    def trace_show(self, caller: Caller, req: ops.TraceShow) -> dict[str, Any]:
        return self.traces.show()

    @handles(ops.TraceClear)
    def trace_clear(self, caller: Caller, req: ops.TraceClear) -> dict[str, Any]:
        return self.traces.clear()

    def _rule_text(self, slot: int) -> str | None:
        rule = self.flows.rule_in_slot(slot)
        return None if rule is None else rule.to_text()

    def _chain_name(self, chain_id: int) -> str:
        return next((name for name, (cid, _) in self.flows.chains.items() if cid == chain_id), str(chain_id))

    def _nf_name(self, nf_id: int) -> str:
        return self.nfs.registry.get(nf_id).name if nf_id in self.nfs.registry else "gone"

    # ---- OpenFlow --------------------------------------------------------------
    @handles(ops.PacketIn)
    def packet_in(self, caller: Caller, req: ops.PacketIn) -> dict[str, Any]:
        """A packet for the OpenFlow controllers, from the packet_io NF (see onvm.sdn)."""
        if self.packet_in_sink is None:
            raise OnvmError("no --controller: nowhere to send the packet", code="not_found")
        try:
            data = base64.b64decode(req.data, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError("'data' must be base64") from None
        return {"queued": self.packet_in_sink(data, req.in_port, req.total_len or len(data))}
