"""What a partition's nodes offer (sinfo: node names, GRES, CPUs), for the two decisions that need
it: whether the built-in profile asks for GPUs, and which limit a refused request ran into.

Used by: planning.py (resolve_gpu_request, for every point before its script is written),
slurm_queries.py (limit_detail, added to Slurm's "Requested node configuration is not available").

Slurm's refusal names no limit; a user on a cluster the toolkit has never seen needs to know
whether it was the node count, the GPUs per node, the GPU type or the CPUs, so the answer is
worked out here from the partition's own nodes.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from typing import Dict, List, Optional

from bnnidr_hpc.config.schema import Config


@dataclass
class Node:
    name: str
    gres: str  # as sinfo prints it: gpu:a100:2(S:0-1), gpu:4, (null)
    cpus: int

    def gpus(self) -> Dict[str, int]:
        """GPU count by type ('' for untyped gres)."""
        found: Dict[str, int] = {}
        for item in self.gres.split(","):
            m = re.match(r"gpu(?::([^:(]+))?:(\d+)", item.strip())
            if m:
                found[m[1] or ""] = found.get(m[1] or "", 0) + int(m[2])
        return found


def partition_nodes(partition: Optional[str]) -> Optional[tuple]:
    """(the partition's name, its nodes); the default partition when None; None when Slurm does
    not answer or knows no such partition."""
    try:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%P|%N|%G|%c"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    rows = [line.split("|") for line in proc.stdout.splitlines() if line.count("|") == 3]
    if partition is None:
        partition = next((p.rstrip("*") for p, *_ in rows if p.endswith("*")), None)
    nodes: Dict[str, Node] = {}
    for part, name, gres, cpus in rows:
        if part.rstrip("*") == partition and name not in nodes:
            nodes[name] = Node(name, gres, int(cpus) if cpus.isdigit() else 0)
    return (partition, list(nodes.values())) if nodes else None


def resolve_gpu_request(c: Config, known: Optional[Dict[Optional[str], bool]] = None) -> None:
    """cluster.gres_gpus unset (the built-in profile, or a profile that does not say): GPUs when a
    type is named or the partition has GPUs; a partition Slurm cannot tell about asks for GPUs.
    known: partition -> has GPUs, asked once for the points of one submission."""
    cl = c.cluster
    if cl.gres_gpus is not None:
        return
    if cl.gpu_type:
        cl.gres_gpus = True
        return
    known = {} if known is None else known
    if cl.partition not in known:
        found = partition_nodes(cl.partition)
        known[cl.partition] = found is None or any(n.gpus() for n in found[1])
    cl.gres_gpus = known[cl.partition]


def limit_detail(c: Config) -> str:
    """Which of the partition's limits the request is over, with its nodes and what was asked
    (one clause, no newline); '' when Slurm does not say about the partition."""
    found = partition_nodes(c.cluster.partition)
    asked = f"asked {c.num_nodes} node(s) x {c.num_gpu} rank(s)"
    if c.cluster.gres_gpus:
        asked += f" with {c.num_gpu} {'gpu:' + c.cluster.gpu_type if c.cluster.gpu_type else 'GPU'}(s) each"
    if found is None:
        return f"{asked}; partition {c.cluster.partition or '(default)'} is not known to this cluster"
    partition, nodes = found
    listing = ", ".join(f"{n.name} ({n.gres if n.gres != '(null)' else 'no gres'}, {n.cpus} CPUs)" for n in nodes)
    return f"{asked}; partition {partition} has {len(nodes)} node(s): {listing}; {_over(c, nodes) or 'no single limit'}"


def _over(c: Config, nodes: List[Node]) -> str:
    cl = c.cluster
    limits = []
    if c.num_nodes > len(nodes):
        limits.append(f"--nodes {c.num_nodes} > its {len(nodes)} node(s)")
    if cl.gres_gpus:
        counts = [n.gpus() for n in nodes]
        types = sorted({t for g in counts for t in g if t})
        if not any(counts):
            limits.append("it has no GPUs (cluster.gres_gpus=false for CPU ranks, or a GPU partition)")
        elif cl.gpu_type and cl.gpu_type not in types:
            limits.append(f"gpu_type={cl.gpu_type} but its GPUs are {', '.join(types) or 'untyped'}")
        else:
            most = max(sum(g.values()) if not cl.gpu_type else g.get(cl.gpu_type, 0) for g in counts)
            if c.num_gpu > most:
                limits.append(f"--gpus {c.num_gpu} > {most} GPU(s) per node")
    cpus = c.num_gpu * cl.cpus_per_task
    if nodes and cpus > max(n.cpus for n in nodes):
        limits.append(f"{cpus} CPUs per node (num_gpu x cluster.cpus_per_task) > {max(n.cpus for n in nodes)}")
    return "over the limit: " + "; ".join(limits) if limits else ""
