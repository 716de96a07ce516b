"""What the rendered NetworkPolicies let a pod reach, evaluated as the NetworkPolicy API defines it.

A pod selected by no policy with an Egress type may reach anything; otherwise a connection is
allowed when any rule of any policy selecting the pod allows it (policies add up). Only addresses
outside the cluster are asked about, so peers that select pods (podSelector, namespaceSelector)
never match; an ipBlock matches its CIDR minus its excepts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

import yaml


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against a pod's labels."""
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def _peer_allows(peer: dict[str, Any], address: str) -> bool:
    block = peer.get("ipBlock")
    if block is None:  # selects pods: never an address outside the cluster
        return False
    ip = ipaddress.ip_address(address)
    cidr = ipaddress.ip_network(block["cidr"])
    if ip.version != cidr.version or ip not in cidr:
        return False
    return not any(
        ip.version == ipaddress.ip_network(e).version and ip in ipaddress.ip_network(e)
        for e in block.get("except") or []
    )


def _port_allows(entry: dict[str, Any], port: int, protocol: str) -> bool:
    if entry.get("protocol", "TCP") != protocol:
        return False
    if "port" not in entry:
        return True
    if not isinstance(entry["port"], int):  # a named port: a pod's, never an outside address's
        return False
    return entry["port"] <= port <= entry.get("endPort", entry["port"])


def _rule_allows(rule: dict[str, Any], address: str, port: int, protocol: str) -> bool:
    ports = rule.get("ports") or []
    peers = rule.get("to") or []
    port_ok = not ports or any(_port_allows(p, port, protocol) for p in ports)
    peer_ok = not peers or any(_peer_allows(p, address) for p in peers)
    return port_ok and peer_ok


def egress_policies(objects: list[dict[str, Any]], labels: dict[str, str]) -> list[dict[str, Any]]:
    """The NetworkPolicies that isolate this pod's egress."""
    return [
        policy
        for policy in objects
        if policy["kind"] == "NetworkPolicy"
        and "Egress" in policy["spec"].get("policyTypes", ["Ingress"])
        and selects(policy["spec"]["podSelector"], labels)
    ]


def may_reach(
    objects: list[dict[str, Any]], labels: dict[str, str], address: str, port: int, protocol: str = "TCP"
) -> bool:
    policies = egress_policies(objects, labels)
    if not policies:
        return True
    return any(
        _rule_allows(rule, address, port, protocol)
        for policy in policies
        for rule in policy["spec"].get("egress") or []
    )


def pods(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, str]]]:
    """(name, pod labels) of every pod the release runs: its Deployments and the training Job."""
    for obj in objects:
        if obj["kind"] == "Deployment":
            yield obj["metadata"]["name"], obj["spec"]["template"]["metadata"]["labels"]
        if obj["kind"] == "ConfigMap" and "job.yaml" in obj.get("data", {}):
            job = yaml.safe_load(obj["data"]["job.yaml"])
            yield "training-job", job["spec"]["template"]["metadata"]["labels"]
