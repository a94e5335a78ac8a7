"""A small evaluator of Kubernetes NetworkPolicy semantics, enough to ask "may A reach B on port
P?" of the rendered policies: policies are additive, a pod that no policy selects for a direction
is open in that direction, and a connection needs both the source's egress and the destination's
ingress to allow it. A peer with an ipBlock matches addresses outside the cluster that are in its
CIDR and in none of its exceptions (never a pod: where a CNI applies ipBlocks to pod addresses
varies, and the manifests do not rely on it). Named ports are not modelled."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from tests.deploy.kube import Obj, selector_matches


@dataclass(frozen=True)
class Endpoint:
    """A pod (labels and namespace) or, with external=True, an address outside the cluster."""

    namespace: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    namespace_labels: dict[str, str] = field(default_factory=dict)
    external: bool = False
    address: str = ""  # external endpoints only

    def ns_labels(self) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": self.namespace, **self.namespace_labels}


def pod(namespace: str, **labels: str) -> Endpoint:
    return Endpoint(namespace=namespace, labels=dict(labels))


def outside(address: str) -> Endpoint:
    """An address outside the cluster."""
    return Endpoint(external=True, address=str(ipaddress.ip_address(address)))


EXTERNAL = outside("93.184.215.14")  # a public address on the internet


def _selects(policy: Obj, target: Endpoint, direction: str) -> bool:
    if target.external or policy["metadata"].get("namespace", "") != target.namespace:
        return False
    spec = policy["spec"]
    types = spec.get("policyTypes") or (["Ingress", "Egress"] if "egress" in spec else ["Ingress"])
    return direction in types and selector_matches(spec.get("podSelector") or {}, target.labels)


def _peer_matches(peer: Obj, other: Endpoint, policy_namespace: str) -> bool:
    if "ipBlock" in peer:
        return other.external and _in_block(peer["ipBlock"], other.address)
    if other.external:
        return False
    ns_selector = peer.get("namespaceSelector")
    pod_selector = peer.get("podSelector")
    if ns_selector is None:
        in_namespace = other.namespace == policy_namespace
    else:
        in_namespace = selector_matches(ns_selector, other.ns_labels())
    if not in_namespace:
        return False
    return pod_selector is None or selector_matches(pod_selector, other.labels)


def _in_block(block: Obj, address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if ip not in ipaddress.ip_network(block["cidr"]):  # False across address families
        return False
    return not any(ip in ipaddress.ip_network(cidr) for cidr in block.get("except") or [])


def _port_matches(rule: Obj, port: int, protocol: str) -> bool:
    ports = rule.get("ports")
    if not ports:
        return True
    for entry in ports:
        if entry.get("protocol", "TCP") != protocol:
            continue
        if "port" not in entry:
            return True
        start = entry["port"]
        if not isinstance(start, int):
            raise AssertionError(f"named port {start!r}: use numbers in NetworkPolicies")
        if start <= port <= entry.get("endPort", start):
            return True
    return False


def _direction_allows(
    policies: list[Obj],
    subject: Endpoint,
    other: Endpoint,
    port: int,
    protocol: str,
    direction: str,
) -> bool:
    selecting = [p for p in policies if _selects(p, subject, direction)]
    if subject.external or not selecting:
        return True
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for policy in selecting:
        namespace = policy["metadata"].get("namespace", "")
        for rule in policy["spec"].get(key) or []:
            peers = rule.get(peers_key)
            peer_ok = not peers or any(_peer_matches(p, other, namespace) for p in peers)
            if peer_ok and _port_matches(rule, port, protocol):
                return True
    return False


def allowed(
    policies: list[Obj], src: Endpoint, dst: Endpoint, port: int, protocol: str = "TCP"
) -> bool:
    """True when src's egress and dst's ingress both let the connection through."""
    return _direction_allows(policies, src, dst, port, protocol, "Egress") and _direction_allows(
        policies, dst, src, port, protocol, "Ingress"
    )
