"""What submission asks the Slurm cluster itself: would it take each group (`sbatch --test-only`,
and the partition's time limit), is a controller there at all, and which controller took a job.

Used by: submit_report.py (`submit --check`), cli.py (is Slurm here, before submitting or
retrying), submit.py (cluster_identity, slurm_reason), hydra_launcher.py (last_line),
benchmarks/bench_tooling.py (slurm_available).

Before anything is submitted every group is tried with `sbatch --test-only` and its time limit
compared with the partition's, so a point the cluster would refuse stops the whole submission with
Slurm's reason, the limit it is over (slurm_nodes.limit_detail) and the cluster asked. Every
command runs with a timeout and a failure to run it reads as Slurm's answer.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import List, Optional, Tuple

from bnnidr_hpc.cluster.planning import Plan, Point
from bnnidr_hpc.cluster.sbatch import sbatch_script
from bnnidr_hpc.cluster.slurm_nodes import limit_detail
from bnnidr_hpc.config.schema import Config


def check(p: Plan, groups: List[List[Point]]) -> List[Tuple[List[Point], Optional[str], str]]:
    """Each group tried with `sbatch --test-only` and its time limit against its partition's:
    (points, why Slurm would refuse or strand them or None, where it would start them)."""
    results = []
    for group in groups:
        with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="bnnidr-check-") as script:
            script.write(sbatch_script(p, group))
            script.flush()
            proc = _slurm(["sbatch", "--test-only", script.name])
        answer = last_line(proc.stderr + proc.stdout)
        if proc.returncode != 0:
            results.append((group, _with_limit(group[0].config, slurm_reason(answer)), ""))
            continue
        partition = (re.search(r"in partition (\S+)", answer) or [None, ""])[1]
        results.append((group, _over_time_limit(group[0].config, partition), answer.replace("sbatch: ", "")))
    return results


def _with_limit(c: Config, reason: str) -> str:
    """Slurm's reason, with the limit the request is over and the cluster that was asked."""
    ident = cluster_identity()
    where = f"cluster {ident['slurm_cluster'] or '?'} (SLURM_CONF={ident['slurm_conf']})"
    if "node configuration is not available" in reason or "Invalid generic resource" in reason:
        return f"{reason}: {limit_detail(c)}; {where}"
    return f"{reason}; {where}"


def _over_time_limit(c: Config, partition: str) -> Optional[str]:
    """Why a job over its partition's MaxTime would pend forever (--test-only does not say), or None."""
    if not partition:
        return None
    fields = dict(t.split("=", 1) for t in _slurm(["scontrol", "show", "partition", "-o", partition]).stdout.split()
                  if "=" in t)
    limit = _minutes(fields.get("MaxTime", "UNLIMITED"))
    if limit is not None and c.cluster.timeout_min > limit:
        return (f"cluster.timeout_min={c.cluster.timeout_min} is over partition {partition}'s MaxTime of "
                f"{limit} min: the job would pend forever; lower it or pick another partition")
    return None


def _minutes(text: str) -> Optional[int]:
    """Slurm's [D-]HH:MM:SS (or MM:SS) in minutes; None for UNLIMITED."""
    if text in ("UNLIMITED", "INFINITE", ""):
        return None
    days, _, clock = text.rpartition("-")
    try:
        parts = [int(x) for x in clock.split(":")]
        parts = [0] * (3 - len(parts)) + parts
        return (int(days or 0) * 24 + parts[0]) * 60 + parts[1] + (parts[2] > 0)
    except ValueError:  # a form this parser does not know: no limit to check against
        return None


def _slurm(cmd: List[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(cmd, 1, "", f"{cmd[0]}: {exc}")


def last_line(text: str) -> str:
    """The last non-blank line of text, stripped ("" for none)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def slurm_reason(text: str) -> str:
    """Slurm's reason from sbatch's error output: 'sbatch: error: Batch job submission failed: X'."""
    for marker in ("submission failed: ", "error: "):
        if marker in text:
            return text.split(marker, 1)[1].strip()
    return text.strip() or "sbatch failed without a message"


def cluster_identity() -> dict:
    """Which controller took the job (its configuration file, cluster name and host), so that
    status asks that cluster and not whichever one the environment points at later."""
    conf = os.environ.get("SLURM_CONF") or "/etc/slurm/slurm.conf"
    fields = {}
    for line in _slurm(["scontrol", "show", "config"]).stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() in ("ClusterName", "SlurmctldHost[0]"):
            fields[key.strip()] = value.strip()
    return {"slurm_conf": str(Path(conf).resolve()), "slurm_cluster": fields.get("ClusterName"),
            "slurm_controller": fields.get("SlurmctldHost[0]")}


def slurm_available() -> Optional[str]:
    """None when sbatch and a reachable controller are here, else why not (one line)."""
    if not shutil.which("sbatch"):
        return "no Slurm on this machine (sbatch not found)"
    probe = _slurm(["sinfo", "-h", "-o", "%P"])
    if probe.returncode != 0:
        return f"the Slurm controller does not answer ({last_line(probe.stderr) or 'sinfo failed'})"
    return None
