"""Topologies: one YAML file describing a manager, ports, NFs, chains and rules (``onvm run``)."""

from onvm.topology.schema import Topology, TopologyError, load_topology, loads_topology

__all__ = ["Topology", "TopologyError", "load_topology", "loads_topology"]
