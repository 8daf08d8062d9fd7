"""Every way a run can end is in its record and on the terminal in one line; nothing is lost.

Divergence, a failing or lost rank (real processes), a full disk, a second writer, kill -9,
Ctrl-C on local ranks, file permissions.
"""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import TINY, run_dirs

from bnnidr_hpc import cli
from bnnidr_hpc.cluster import status
from bnnidr_hpc.config.identity import run_dir_for
from bnnidr_hpc.records import run_files
from bnnidr_hpc.runtime import atomic_files, distributed


def record(run_dir):
    return json.loads((run_dir / "record.json").read_text())


def cli_run(capsys, *args):
    code = cli.main(["run", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_diverging_run_stops_at_once_and_says_so_on_every_rerun(tiny, capsys):
    overrides = ["max_epochs=6", "optimizers.0.name=sgd", "learning_rate=1e12"]
    rd = run_dir_for(tiny(*overrides))
    args = [*TINY, f"run.root={rd.parent}", *overrides]
    code, out, err = cli_run(capsys, *args)
    rec = record(rd)
    assert code == 1 and err.count("\n") == 1 and "bnnidr-hpc: diverged: " in err and "Traceback" not in err
    assert rec["status"] == "diverged" and "non-finite loss" in rec["error"] and "in epoch 1" in rec["error"]
    assert rec["diverged_at"]["epoch"] == 1 and rec["epochs_done"] == 0
    assert not (rd / "checkpoint.pt").exists()  # no finite epoch to keep, and nothing non-finite written
    assert "NaN" not in (rd / "record.json").read_text() and "Infinity" not in (rd / "record.json").read_text()
    assert status.run_status(rd)["state"] == "diverged"
    code, out, err = cli_run(capsys, *args)  # rerunning says so instead of crashing
    assert code == 1 and out.startswith("already diverged")


def test_a_loss_blow_up_past_the_factor_is_divergence_and_the_finite_checkpoint_survives(tiny, monkeypatch):
    from bnnidr_hpc.train import step as step_module
    from bnnidr_hpc.train.loop import train

    make = step_module.make_step

    def blowing_up(*args, **kwargs):  # from the 9th step (epoch 2) the loss is 1000x
        inner, calls = make(*args, **kwargs), [0]

        def step(*batch):
            calls[0] += 1
            stress, kl = inner(*batch)
            return (stress * 1000, kl) if calls[0] > 8 else (stress, kl)
        return step

    monkeypatch.setattr("bnnidr_hpc.train.session.make_step", blowing_up)
    c = tiny("run.diverge_factor=10")
    rec = train(c, run_dir_for(c))
    assert rec["status"] == "diverged" and rec["diverged_at"] == {"epoch": 2, "step": None}
    assert "over run.diverge_factor=10" in rec["error"] and rec["epochs_done"] == 1
    saved = torch.load(run_dir_for(c) / "checkpoint.pt", weights_only=False)
    assert saved["state"]["epoch"] == 1  # the last finite epoch's checkpoint is the run's checkpoint


def _rank_that_fails_or_stops(rank, port, c, run_dir, how):
    from bnnidr_hpc.cluster import job
    from bnnidr_hpc.train import step as step_module

    make = step_module.make_step

    def flaky(*args, **kwargs):
        inner, calls = make(*args, **kwargs), [0]

        def step(*batch):
            calls[0] += 1
            if rank == 1 and calls[0] == 5:
                if how == "raise":
                    raise ValueError("rank 1 broke on purpose")
                os.kill(os.getpid(), signal.SIGSTOP)  # hung: alive, but never answers again
            return inner(*batch)
        return step

    import bnnidr_hpc.train.session as session_module

    session_module.make_step = flaky
    job._local_rank(rank, c, run_dir, port)


@pytest.mark.parametrize("how", ["raise", "stop"])
def test_a_failing_or_stopped_rank_ends_the_run_naming_the_rank_and_its_host(tiny, how):
    import socket

    import torch.multiprocessing as mp

    c = tiny("num_gpu=2", "batch_size=16", "max_epochs=50", "run.rank_timeout_s=3")
    rd = run_dir_for(c)
    started = time.time()
    ctx = mp.start_processes(_rank_that_fails_or_stops, args=(distributed.free_port(), c, str(rd), how),
                             nprocs=2, start_method="spawn", join=False)
    try:
        deadline = time.time() + 60
        while ctx.processes[0].is_alive() and time.time() < deadline:
            time.sleep(0.2)
        assert not ctx.processes[0].is_alive(), "rank 0 did not end"
        assert ctx.processes[0].exitcode != 0
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    rec = record(rd)
    assert rec["status"] == "failed" and f"rank 1 on {socket.gethostname()}" in rec["error"], rec.get("error")
    if how == "raise":
        assert "ValueError: rank 1 broke on purpose" in rec["error"]
        assert time.time() - started < 30  # told at once, not after a timeout
    else:
        assert "has not answered for 3 s" in rec["error"]
    assert status.run_status(rd)["state"] == "failed"


def test_run_gpus_2_with_a_failing_rank_is_one_line_and_a_failed_record(tmp_path):
    # `run --gpus 2` in a subprocess whose rank 1 raises: the parent prints one line, exit 1
    script = (
        "import sys, bnnidr_hpc.train.step as s\n"
        "make = s.make_step\n"
        "def flaky(*a, **k):\n"
        "    inner = make(*a, **k)\n"
        "    def step(*b):\n"
        "        import torch.distributed as d\n"
        "        if d.get_rank() == 1: raise ValueError('rank 1 broke on purpose')\n"
        "        return inner(*b)\n"
        "    return step\n"
        "import bnnidr_hpc.train.session as t; t.make_step = flaky\n"
        "from bnnidr_hpc import cli\n"
        "if __name__ == '__main__':\n"
        "    sys.exit(cli.main(sys.argv[1:]))\n")
    # the spawned ranks import this script again (as __mp_main__), so they are patched too
    (tmp_path / "flaky_run.py").write_text(script)
    proc = subprocess.run([sys.executable, str(tmp_path / "flaky_run.py"), "run", *TINY,
                           f"run.root={tmp_path / 'runs'}", "batch_size=16", "--gpus", "2"],
                          capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("bnnidr-hpc: failed:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "rank 1" in lines[0] and "ValueError: rank 1 broke on purpose" in lines[0]
    (rec_path,) = (tmp_path / "runs").glob("*/record.json")
    assert json.loads(rec_path.read_text())["status"] == "failed"


def test_a_full_disk_is_one_line_naming_enospc_and_the_last_checkpoint_survives(tiny, monkeypatch, capsys):
    saves = []
    real_replace = os.replace

    def replace(src, dst):  # the second checkpoint finds the disk full
        if str(dst).endswith("checkpoint.pt"):
            saves.append(dst)
            if len(saves) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(run_files.os, "replace", replace)
    c = tiny()
    code, out, err = cli_run(capsys, *TINY, f"run.root={c.run.root}")
    rd = run_dir_for(c)
    assert code == 1 and err.count("\n") == 1
    assert "No space left on device (ENOSPC)" in err and str(rd / "checkpoint.pt") in err
    assert torch.load(rd / "checkpoint.pt", weights_only=False)["state"]["epoch"] == 1
    assert not list(rd.glob(".*.tmp"))
    rec = record(rd)
    assert rec["status"] == "failed" and "ENOSPC" in rec["error"]


def test_a_checkpoint_write_that_fails_on_its_thread_is_raised_by_the_next_save_and_by_wait(tiny, tmp_path,
                                                                                             monkeypatch):
    from bnnidr_hpc.model.reducer import Reducer
    from bnnidr_hpc.train.checkpoint import TrainState, Writer
    from bnnidr_hpc.train.optim import Optimizers

    c = tiny()
    model = Reducer(c.model_spec())
    optimizers = Optimizers(c.optimizers, c.max_epochs, model)
    path, cpu, writer = tmp_path / "checkpoint.pt", torch.device("cpu"), Writer()

    def save(epoch):
        writer.save(path, model, optimizers, TrainState(epoch=epoch), cpu, time.time())

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    save(1)
    writer.wait()
    assert torch.load(path, weights_only=False)["state"]["epoch"] == 1
    with monkeypatch.context() as m:
        m.setattr(run_files.os, "replace", full_disk)
        save(2)
        writer.join()
    with pytest.raises(atomic_files.RunFileError, match="ENOSPC"):  # epoch 2's failed write, raised by the next save
        save(3)
    assert torch.load(path, weights_only=False)["state"]["epoch"] == 1  # the last good one is kept
    with monkeypatch.context() as m:
        m.setattr(run_files.os, "replace", full_disk)
        save(3)
        with pytest.raises(atomic_files.RunFileError, match="ENOSPC"):
            writer.wait()
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_second_run_of_the_same_config_says_who_holds_it(tiny, capsys):
    c = tiny()
    rd = run_dir_for(c)
    with run_files.hold(rd):
        code, out, err = cli_run(capsys, *TINY, f"run.root={c.run.root}")
        assert code == 2 and err.count("\n") == 1
        assert f"is in use by host {__import__('socket').gethostname()} pid {os.getpid()}" in err
    assert not (rd / "record.json").exists()
    # a holder that died (its lock released by the kernel) is taken over
    assert cli_run(capsys, *TINY, f"run.root={c.run.root}")[0] == 0


def test_kill_9_loses_no_metrics_line_and_every_session_is_counted(tmp_path):
    args = [sys.executable, "-m", "bnnidr_hpc.cli", "run", *TINY, f"run.root={tmp_path}", "data.n=4096",
            "max_epochs=12", "run.progress=false"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        found = list(tmp_path.glob("*/checkpoint.pt"))
        if found and torch.load(found[0], weights_only=False)["state"]["epoch"] >= 3:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    (rd,) = [p.parent for p in tmp_path.glob("*/config.yaml")]
    # Its record still says running, but no process holds the directory: status says so.
    from bnnidr_hpc.cluster.status import run_status

    assert record(rd)["status"] == "running"
    killed = run_status(rd)
    assert killed["state"] == "interrupted" and "process is gone" in killed["detail"]
    first_session = torch.load(rd / "checkpoint.pt", weights_only=False)["elapsed_s"]
    # a kill between the checkpoint and its metrics line: the line is missing
    lines = (rd / "metrics.jsonl").read_text().splitlines()
    (rd / "metrics.jsonl").write_text("\n".join(lines[:-1]) + "\n" if len(lines) > 1 else "")
    assert subprocess.run(args, capture_output=True, timeout=120).returncode == 0
    rec = record(rd)
    epochs = [json.loads(line)["epoch"] for line in (rd / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 13)) and rec["restarts"] == 1
    assert rec["total_seconds"] >= first_session + rec["session_seconds"]  # both sessions counted


def test_ctrl_c_on_local_ranks_ends_with_one_line_and_resumes(tmp_path):
    args = [sys.executable, "-m", "bnnidr_hpc.cli", "run", *TINY, f"run.root={tmp_path}", "data.n=4096",
            "max_epochs=40", "batch_size=16", "--gpus", "2"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while not list(tmp_path.glob("*/metrics.jsonl")) and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "bnnidr-hpc: interrupted; rerun the same command to resume from the checkpoint" in err
    (rd,) = [p.parent for p in tmp_path.glob("*/record.json")]
    assert record(rd)["status"] == "interrupted"


def test_files_honour_the_umask(tmp_path):
    code = ("import os, sys; os.umask(0o027); from bnnidr_hpc import cli; sys.exit(cli.main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, "run", *TINY, f"run.root={tmp_path}", "max_epochs=1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (rd,) = run_dirs(tmp_path)
    for name in ("record.json", "config.yaml", "checkpoint.pt", "metrics.jsonl"):
        assert oct((rd / name).stat().st_mode & 0o777) == oct(0o640), name


def test_records_are_strict_json_with_non_finite_values_as_null(tmp_path):
    path = tmp_path / "r.json"
    run_files.write_json(path, {"loss": float("nan"), "nested": [float("inf"), 1.0]})
    strict = json.loads(path.read_text(), parse_constant=lambda token: pytest.fail(f"{token} in a record"))
    assert strict == {"loss": None, "nested": [None, 1.0]}


def test_a_run_resumes_only_on_the_device_type_its_data_were_made_on(tiny):
    # the generator makes other points on another device type: resuming there would mix data sets
    from bnnidr_hpc.runtime.errors import ConfigError
    from bnnidr_hpc.train.loop import train

    c = tiny("max_epochs=1")
    rd = run_dir_for(c)
    train(c, rd)
    saved = torch.load(rd / "checkpoint.pt", weights_only=False)
    torch.save({**saved, "device_type": "cuda"}, rd / "checkpoint.pt")
    with pytest.raises(ConfigError, match="data were made on cuda and it resumes on cpu"):
        train(tiny("max_epochs=2"), rd)
    assert record(rd)["status"] == "completed"  # refusing to resume is not the run's failure


def test_a_job_that_failed_before_writing_anything_says_why_from_slurm(tmp_path):
    # What status kept of a job whose node could not write the run directory (no shared file
    # system): Slurm's final state, and a log path that does not exist.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    missing = tmp_path / "not-on-this-node" / "7_0_log.err"
    run_files.write_json(run_dir / run_files.JOB, {
        "job_id": "99999998", "executor": "slurm", "stderr": str(missing),
        "slurm_conf": str(tmp_path / "no-such.conf"),
        "final_slurm_state": {"JobState": "FAILED", "Reason": "NonZeroExitCode", "ExitCode": "1:0",
                              "NodeList": "gpu2"}})
    row = status.run_status(run_dir)
    assert row["state"] == "failed"
    assert "JobState=FAILED Reason=NonZeroExitCode ExitCode=1:0 NodeList=gpu2" in row["detail"]
    assert f"no log at {missing}" in row["detail"] and "file system every node shares" in row["detail"]


def test_a_rendezvous_nobody_serves_fails_within_the_timeout_naming_address_and_port():
    port = distributed.free_port()
    info = distributed.describe({"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    started = time.time()
    with pytest.raises(distributed.RendezvousFailed, match=f"rendezvous at 127.0.0.1:{port} failed"):
        distributed.init(info, torch.device("cpu"), timeout_s=2.0)
    assert time.time() - started < 15


def test_slurm_ranks_meet_at_the_first_nodes_address_on_a_port_below_the_ephemeral_range():
    env = {"SLURM_PROCID": "1", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "123456",
           "SLURMD_NODENAME": "gpu2", "SLURM_JOB_NODELIST": "localhost"}
    info = distributed.describe(env)
    assert (info.rank, info.world_size, info.local_rank, info.hostname) == (1, 4, 1, "gpu2")
    assert info.master_port == 20000 + 123456 % 12000 and info.master_port < 32768
    # a setup line's MASTER_ADDR / MASTER_PORT win
    info = distributed.describe({**env, "MASTER_ADDR": "10.1.2.3", "MASTER_PORT": "23456"})
    assert (info.master_addr, info.master_port) == ("10.1.2.3", 23456)


def test_status_leaves_out_run_directories_set_aside_by_force_and_unknown_time_limits_check_nothing(tmp_path):
    from bnnidr_hpc.cluster.slurm_queries import _minutes

    for name in ("a", "a.replaced-20261203-101010"):
        (tmp_path / name).mkdir()
        run_files.write_json(tmp_path / name / run_files.RECORD, {"status": "completed"})
    assert [d.name for d in status.find_run_dirs(tmp_path)] == ["a"]
    assert [_minutes(t) for t in ("2:00:00", "1-00:00:00", "30:00", "UNLIMITED", "NONE")] == [120, 1440, 30, None, None]


@pytest.fixture
def own_signal_handlers():
    """run_local's stop handlers (SIGTERM, SIGINT) are this process's: put pytest's back after."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_in_the_last_epoch_resumes_to_the_identical_final_loss(tiny, tmp_path, monkeypatch, sig,
                                                                             own_signal_handlers):
    from bnnidr_hpc.cluster.job import run_local
    from bnnidr_hpc.train import session

    c = tiny("max_epochs=3")  # 8 steps per epoch
    straight = run_local(c, tmp_path / "straight")
    make, calls = session.make_step, [0]

    def signalling_at_step_20(*args, **kwargs):  # step 4 of the last epoch
        step = make(*args, **kwargs)

        def run(*batch):
            calls[0] += 1
            if calls[0] == 20:
                os.kill(os.getpid(), sig)
            return step(*batch)
        return run

    monkeypatch.setattr(session, "make_step", signalling_at_step_20)
    first = run_local(c, tmp_path / "resumed")
    assert first["status"] == "interrupted" and first["epochs_done"] == 2
    monkeypatch.undo()
    resumed = run_local(c, tmp_path / "resumed")
    assert resumed["status"] == "completed" and resumed["restarts"] == 1
    assert resumed["final_loss"] == straight["final_loss"]  # exactly, as after kill -9
    assert [e["loss"] for e in resumed["epochs"]] == [e["loss"] for e in straight["epochs"]]
    assert resumed["ap_out"] == straight["ap_out"]


def test_local_ranks_with_5_steps_per_epoch_stop_within_seconds_of_sigterm(tmp_path):
    args = [sys.executable, "-m", "bnnidr_hpc.cli", "run", *TINY, f"run.root={tmp_path}", "data.n=320",
            "max_epochs=100000", "eval.every=1000", "--gpus", "2"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and sum(len(p.read_text().splitlines()) for p in
                                             tmp_path.glob("*/metrics.jsonl")) < 3:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)  # to the parent alone: it passes it on to its ranks
        sent = time.time()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 3 and time.time() - sent < 15, err[-2000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    (rd,) = [p.parent for p in tmp_path.glob("*/record.json")]
    rec = record(rd)
    assert rec["status"] == "interrupted" and rec["steps_per_epoch"] == 5 and rec["epochs_done"] < 100000
