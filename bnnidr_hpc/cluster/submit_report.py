"""A plan's submission as the terminal sees it: the dry run's configs and scripts, what happens to
each point (done, queued, diverged, resumed), the cluster's verdict on every group, then the jobs
submitted and the groups refused, one line each. The plan is planning.py's, the submitting
submit.py's.

Used by: cli.py (`bnnidr-hpc submit`, `bnnidr-hpc retry`).

Refusals go to stderr, prefixed `bnnidr-hpc: ` as the command's other errors; the command turns a
refusal into exit status 2.
"""

from __future__ import annotations

import sys

from bnnidr_hpc.cluster import planning, sbatch, slurm_queries, submit


def show_dry_run(plan: planning.Plan) -> None:
    for text in sbatch.dry_run(plan):
        print(text)
    print(f"dry run: {len(plan.points)} run(s) validated, nothing submitted "
          f"(--check asks the cluster whether it would take them)")


def show_actions(plan: planning.Plan) -> None:
    """What submit does with each point that it does not simply submit (after planning.classify)."""
    for point in plan.points:
        if point.action == planning.DONE:
            print(f"completed, not rerun (--force to rerun): {point.run_dir}  {point.detail}")
        elif point.action == planning.QUEUED:
            print(f"already {point.detail}: {point.run_dir}")
        elif point.action == planning.DIVERGED:
            print(f"diverged, not rerun (--force to rerun): {point.run_dir}  {point.detail}")
        elif point.action == planning.RESUME:
            print(f"resuming from its checkpoint: {point.run_dir}")


def profile_named(c) -> str:
    """Which profile a group used, as messages name it."""
    cl = c.cluster
    return f"cluster={cl.name} ({cl.profile_path})" if cl.profile_path else f"cluster={cl.name} (no profile given)"


# Under this, a job gets its warning signal (and checkpoints, and requeues) soon after it starts.
MIN_WORK_S = 60


def short_limit_warnings(plan: planning.Plan) -> list:
    """One line per profile whose time limit leaves under a minute before the warning signal."""
    lines = {}
    for point in plan.points:
        cl = point.config.cluster
        left = cl.timeout_min * 60 - cl.signal_delay_s
        if left < MIN_WORK_S:
            lines[cl.name] = (f"bnnidr-hpc: warning: cluster.timeout_min={cl.timeout_min} x 60 - "
                              f"cluster.signal_delay_s={cl.signal_delay_s} leaves {left} s before the warning "
                              f"signal: each start trains under {MIN_WORK_S} s, then checkpoints and requeues (at "
                              f"most cluster.max_requeues={cl.max_requeues} times); raise timeout_min or lower "
                              "signal_delay_s")
    return list(lines.values())


def check_and_submit(plan: planning.Plan, local: bool, force: bool, check_only: bool) -> bool:
    """Ask the cluster about every group first (sbatch --test-only, partition limits); submit only
    if it would take them all. Each refusal is one line; False when there was one."""
    groups = plan.groups.values() if check_only else planning.pending_groups(plan)
    for line in short_limit_warnings(plan):
        print(line, file=sys.stderr)
    refusals = 0
    for group, refusal, where in ([] if local else slurm_queries.check(plan, list(groups))):
        shape = f"{len(group)} run(s), {group[0].config.num_nodes} node(s) x {group[0].config.num_gpu} GPU(s), " \
                f"{profile_named(group[0].config)}"
        if refusal:
            refusals += 1  # one line each, the whole verdict in it
            print(f"bnnidr-hpc: submit: Slurm would refuse {shape}: {refusal}; nothing submitted", file=sys.stderr)
        elif check_only:
            print(f"ok: {shape}: {where}")
    if refusals:
        return False
    if check_only:
        print(f"check: {len(plan.points)} run(s) the cluster would take, nothing submitted")
        return True
    submitted, refused = submit.submit(plan, local, force)
    for point, info in submitted:
        print(f"submitted job {info['job_id']}: {point.run_dir}")
    for group, reason in refused:
        print(f"bnnidr-hpc: submit: Slurm refused {len(group)} run(s) ({group[0].config.num_nodes} node(s) x "
              f"{group[0].config.num_gpu} GPU(s)): {reason}; not submitted: "
              f"{', '.join(p.run_dir.name for p in group)}", file=sys.stderr)
    if submitted:
        print(f"follow with: bnnidr-hpc status {plan.target} --follow")
    return not refused
