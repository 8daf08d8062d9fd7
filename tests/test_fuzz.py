"""Property-based bad input: every generated override or YAML file is wrong, so every command must
refuse it the same way: exit status 2, one line "bnnidr-hpc: ..." on stderr, no traceback, and
nothing created (run.root, or anything next to the config file).

cli.main runs in-process (a subprocess costs a second of imports per example). Each value below is
invalid for its key whatever the rest of the config says, so a pass is never luck.
"""

import contextlib
import io
import json
import math
import os
import string
import tempfile
from pathlib import Path

import pytest
import yaml
from conftest import CONF
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from bnnidr_hpc import cli
from bnnidr_hpc.config.schema import ACTIVATIONS, DEVICES, EMBEDDINGS, OPTIMIZERS, PRECISIONS, SCHEDULES, Config
from bnnidr_hpc.config.validation import MAX_INT

BASE = CONF / "hps_00040.yaml"  # nlayers=2, batch_size=50, data.n=2000
HEADER = "defaults: [bnnidr_schema, _self_]\n"
# Words OmegaConf or Hydra read as something other than a plain string, or that a key accepts.
SPECIAL = {"true", "false", "null", "none", "nan", "inf", "infinity", "auto", "yes", "no", "on", "off", "y", "n",
           *ACTIVATIONS, *DEVICES, *EMBEDDINGS, *OPTIMIZERS, *PRECISIONS, *SCHEDULES}
# 60 examples per config test (15 per damaged-file test) keep the file near 35 s on 2 busy cores;
# BNNIDR_FUZZ_EXAMPLES=2000 fuzzes deeper.
# No explain phase: it traces every line Hydra runs while replaying a failure, which took many GB.
EXAMPLES = int(os.environ.get("BNNIDR_FUZZ_EXAMPLES", 60))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                phases=[Phase.explicit, Phase.generate, Phase.shrink],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def ints(below=None, above=None):
    """Integers below `below` (inclusive) or above `above` (inclusive), or beyond MAX_INT."""
    parts = [st.integers(min_value=MAX_INT + 1, max_value=10**40), st.integers(max_value=-MAX_INT - 1,
                                                                               min_value=-(10**40))]
    if below is not None:
        parts.append(st.integers(min_value=-1000, max_value=below))
    if above is not None:
        parts.append(st.integers(min_value=above, max_value=MAX_INT))
    return st.one_of(parts)


words = st.text(string.ascii_letters, min_size=1, max_size=10).filter(lambda w: w.lower() not in SPECIAL)
non_finite = st.sampled_from([math.nan, math.inf, -math.inf])
fractions = st.floats(-1e6, 1e6).filter(lambda f: not f.is_integer())
non_positive_floats = st.floats(max_value=0.0, allow_nan=False, allow_infinity=False, min_value=-1e9)
negative_floats = st.floats(max_value=-1e-9, min_value=-1e9)
in_unit = st.floats(0.0, 0.999)

# kind -> (keys, bad values); keys in the override syntax, list items by index.
KINDS = {
    # not num_nodes: submit sets it from --nodes (default 1), over the config's and any override
    "positive int": (["data.n", "data.p", "data.d", "data.categories", "batch_size", "max_epochs", "num_gpu",
                      "layer_size", "output_dim", "eval.queries", "eval.gallery", "eval.every",
                      "eval.mc_samples", "eval.block", "eval.id_sample", "lr_schedule.step_size",
                      "cluster.cpus_per_task", "cluster.timeout_min", "cluster.signal_delay_s"],
                     st.one_of(ints(below=0), fractions, words, non_finite)),
    "non-negative int": (["seed", "nlayers", "run.threads", "cluster.max_requeues"],
                         st.one_of(ints(below=-1), fractions, words, non_finite)),
    "skip": (["skip_steps"], st.one_of(st.just(1), ints(below=-1, above=3), words)),
    "positive float": (["learning_rate", "data.spread", "data.cache_gb", "bayes.prior_sigma", "bayes.init_sigma",
                        "lr_schedule.gamma", "optimizers.0.lr", "cluster.mem_gb", "run.rank_timeout_s"],
                       st.one_of(non_positive_floats, non_finite, words)),
    "non-negative float": (["weight_decay", "data.noise", "bayes.kl_weight", "lr_schedule.warmup_epochs",
                            "optimizers.0.weight_decay"], st.one_of(negative_floats, non_finite, words)),
    "unit": (["lr_schedule.min_factor"], st.one_of(negative_floats, st.floats(1.001, 1e9), non_finite, words)),
    "momentum": (["optimizers.0.momentum"], st.one_of(negative_floats, st.floats(1.0, 1e9), non_finite, words)),
    "betas": (["optimizers.0.betas"], st.one_of(
        st.lists(in_unit, max_size=5).filter(lambda b: len(b) != 2),
        st.tuples(in_unit, st.one_of(negative_floats, st.floats(1.0, 1e9), non_finite)).map(list))),
    "boolean": (["batch_norm", "bayesian", "run.graph", "run.progress", "optimizers.0.nesterov", "cluster.gres_gpus"],
                st.one_of(st.integers(-10**30, 10**30), st.floats(allow_nan=False), words)),
    "choice": (["act_funcs", "data.embedding", "precision", "run.device", "lr_schedule.name", "optimizers.0.name"],
               words),
    "diverge": (["run.diverge_factor"], st.one_of(st.floats(1e-9, 1.0), negative_floats, non_finite, words)),
    "name": (["run.name"], st.sampled_from(["/abs", "a/b", "..", "../up", "x..y", "/"])),
    "root": (["run.root"], st.sampled_from(["/dev/null", "/dev/null/runs", "/dev/null/a/b"])),  # below a file
}
SCHEMA = OmegaConf.structured(Config)
KINDS = {kind: ([k for k in keys if OmegaConf.select(SCHEMA, k, default="?") != "?"], values)
         for kind, (keys, values) in KINDS.items()}  # keys the schema does not hold (yet) are left out
INTERPOLATIONS = ["${nope}", "${data.nope}", "${oc.env:BNNIDR_FUZZ_UNSET}", "${oc.env:}", "\\${escaped}"]
COMMANDS = [["run"], ["submit", "--dry-run"], ["estimate-id"]]


PAIRS = [(key, values) for keys, values in KINDS.values() for key in keys]  # every key equally often


@st.composite
def bad_setting(draw):
    """(dotted key, Python value): a wrong-typed, out-of-range, non-finite, huge or unresolvable value."""
    key, values = draw(st.sampled_from(PAIRS))
    return key, draw(st.sampled_from(INTERPOLATIONS) if draw(st.integers(0, 4)) == 0 else values)


def as_override(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # nan, inf, -inf: Hydra's spelling
    if isinstance(value, list):
        return "[" + ",".join(as_override(v) for v in value) + "]"
    return str(value) if isinstance(value, str) else repr(value)


identifiers = st.from_regex(r"\A[a-z][a-z_]{0,12}\Z").filter(lambda w: w not in SPECIAL)


@st.composite
def unknown_key(draw):
    parent = draw(st.sampled_from(["", "data.", "run.", "eval.", "optimizers.0.", "lr_schedule.", "cluster."]))
    node = OmegaConf.select(SCHEMA, parent[:-1]) if parent else SCHEMA
    name = draw(identifiers.filter(lambda w: w not in node))
    return f"{draw(st.sampled_from(['', '+', '++']))}{parent}{name}={draw(st.integers(0, 9))}"


MALFORMED = ["=1", ".=1", "data..n=1", "data.n.=1", "[x]=1", "a b=1", "seed==1", "seed=1=2", "data.n=[1",
             "data.n={a:", "data.n=]", "seed='open", "seed=${", "seed=${oc.env:", "batch_size=1,,2", "data.n=",
             "seed=???", "optimizers.9.lr=0.1", "data=5", "optimizers=[1]", "seed@pkg=1", "~seed=0", "~data=1",
             "eval.block"]
malformed = st.one_of(st.sampled_from(MALFORMED),
                      st.text("[]{}()=,:'\"$ .+~@", min_size=1, max_size=12).map(lambda t: f"seed={t}"))


def _accepted(*args, **kwargs):
    raise AssertionError("accepted: the command went past loading its config")


@pytest.fixture(scope="module", autouse=True)
def no_work():
    """A value the generators got wrong (a valid one) fails at once, instead of training or
    estimating for every example Hypothesis replays while shrinking."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("bnnidr_hpc.cluster.job.run_local", _accepted)
        mp.setattr("bnnidr_hpc.train.intrinsic.estimate_config", _accepted)
        mp.setattr("bnnidr_hpc.cluster.sbatch.dry_run", _accepted)
        yield


def assert_refused(argv, *untouched: Path):
    """Exit 2, one line on stderr, no traceback; nothing created under the given folders."""
    before = {p: sorted(os.listdir(p)) if p.exists() else None for p in untouched}
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = cli.main(argv)
    text = err.getvalue()
    assert code == 2, (argv, code, text, out.getvalue()[-500:])
    assert text.count("\n") == 1 and text.startswith("bnnidr-hpc: ") and "Traceback" not in text, (argv, text)
    for p, listing in before.items():
        assert (sorted(os.listdir(p)) if p.exists() else None) == listing, (argv, p)


@FUZZ
@given(st.sampled_from(COMMANDS), bad_setting())
def test_bad_values_are_refused_in_one_line(command, setting):
    # One bad value per example: a second would hide a first that slipped through.
    key, value = setting
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "runs"
        assert_refused([*command, str(BASE), f"run.root={root}", f"{key}={as_override(value)}"], root, Path(tmp))


@FUZZ
@given(st.sampled_from(COMMANDS), st.one_of(unknown_key(), malformed), st.booleans())
def test_unknown_keys_and_malformed_overrides_are_refused_in_one_line(command, override, with_file):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "runs"
        config = [str(BASE)] if with_file else []
        assert_refused([*command, *config, f"run.root={root}", override], root, Path(tmp))


def nested(key: str, value):
    """data.n -> {"data": {"n": value}}; optimizers.0.lr -> {"optimizers": [{"lr": value}]}."""
    for part in reversed(key.split(".")):
        value = [value] if part.isdigit() else {part: value}
    return value


def deep(depth: int, leaf="[]"):
    return "[" * depth + leaf + "]" * depth


@st.composite
def bad_yaml(draw):
    """The bytes of a config file that must be refused."""
    which = draw(st.sampled_from(["bytes", "text", "not a mapping", "deep", "unknown", "wrong", "defaults"]))
    if which == "bytes":
        return draw(st.binary(max_size=300))
    if which == "text":
        return draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    if which == "not a mapping":
        scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), words)
        return yaml.safe_dump(draw(st.one_of(scalars, st.lists(scalars, max_size=4)))).encode()
    if which == "deep":
        where = draw(st.sampled_from(["sweep:\n  grid:\n    x: ", "data: ", "cluster:\n  sbatch:\n    x: "]))
        return (HEADER + where + deep(draw(st.integers(17, 3000))) + "\n").encode()
    if which == "unknown":
        return (HEADER + yaml.safe_dump(nested(draw(unknown_key()).lstrip("+").split("=")[0], 1))).encode()
    if which == "wrong":  # not run.root: the command line's run.root=... would replace it
        key, value = draw(bad_setting().filter(lambda setting: setting[0] != "run.root"))
        return (HEADER + yaml.safe_dump(nested(key, value))).encode()
    defaults = draw(st.sampled_from([3, "bnnidr_schema", {"a": 1}, ["nope"], [], None, [[1]]]))
    return yaml.safe_dump({"defaults": defaults, "seed": 1}).encode()


@FUZZ
@given(st.sampled_from(COMMANDS), bad_yaml(), st.sampled_from(["bad.yaml", "bad.yml", "bad"]))
def test_bad_yaml_files_are_refused_in_one_line(command, content, name):
    with tempfile.TemporaryDirectory() as tmp:
        root, folder = Path(tmp) / "runs", Path(tmp) / "conf"
        folder.mkdir()
        (folder / name).write_bytes(content)
        assert_refused([*command, str(folder / name), f"run.root={root}"], root, folder, Path(tmp))


# ----------------------------------------------------------------------------- damaged files
# Not only configs: the files every other command reads. Feature files for estimate-id and reduce,
# a trained run directory for reduce, job.json / record.json / sweep.json for the lifecycle
# commands, record.json for collect. Each is damaged at random (cut short, bytes flipped, fields of
# any JSON type); every case must end in exit 0, or one line and exit 2 (1 where collect found no
# record): never a traceback. Fewer examples than above: each one reads or writes real files.
FILES = settings(FUZZ, max_examples=max(10, EXAMPLES // 4))
REAL_RUN_LOCAL = __import__("bnnidr_hpc.cluster.job", fromlist=["run_local"]).run_local
REAL_ESTIMATE = __import__("bnnidr_hpc.train.intrinsic", fromlist=["estimate_config"]).estimate_config
P = 8  # the feature width of the trained run below


def outcome(argv, allowed=(0, 2)):
    """(exit status, stdout, stderr) of cli.main(argv); a traceback fails the test, and so does more
    than one line on stderr with a non-zero status."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = cli.main(argv)
    text = err.getvalue()
    assert code in allowed, (argv, code, text)
    assert "Traceback" not in text + out.getvalue(), (argv, text)
    if code:
        assert text.count("\n") == 1 and text.startswith("bnnidr-hpc: "), (argv, text)
    event(f"{argv[0]} exit {code}")  # --hypothesis-show-statistics: how often each command got through
    return code, out.getvalue(), text


@st.composite
def mutated(draw, blob: bytes) -> bytes:
    """blob cut short, with bytes flipped, with bytes appended, or replaced by random bytes."""
    how = draw(st.sampled_from(["whole", "cut", "flip", "append", "random"]))
    if how == "cut":
        return blob[:draw(st.integers(0, max(0, len(blob) - 1)))]
    if how == "flip" and blob:
        data = bytearray(blob)
        for _ in range(draw(st.integers(1, 4))):
            # Mostly where the structure is (the header of a .npy, the zip's directory), sometimes anywhere.
            end = len(data) - 1 if draw(st.booleans()) else min(127, len(data) - 1)
            i = draw(st.integers(0, end))
            data[i] = draw(st.integers(0, 255))
        return bytes(data)
    if how == "append":
        return blob + draw(st.binary(min_size=1, max_size=64))
    if how == "random":
        return draw(st.binary(max_size=300))
    return blob


@st.composite
def feature_file(draw) -> bytes:
    """The bytes of a .npy file: any shape, dtype and values (NaN rows, copies of one row), maybe damaged."""
    import numpy as np

    # A third are valid files (any float dtype, some rows repeated) so that estimate-id and reduce get through.
    clean = draw(st.integers(0, 2)) == 0
    rows = draw(st.integers(12 if clean else 0, 60))
    cols = P if clean else draw(st.sampled_from([P, P, 1, 3, P + 1]))
    dtype = draw(st.sampled_from(["float32", "float16", "float64"] + ([] if clean else ["int32", "complex64", "bool"])))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.normal(size=(rows, cols))
    values = draw(st.sampled_from(["normal", "repeats"] + ([] if clean else ["one row", "nan", "inf", "huge"])))
    if values == "one row" and rows:
        x[:] = x[0]
    elif values == "repeats":
        x[rows // 2:] = x[:rows - rows // 2]
    elif values in ("nan", "inf") and rows:
        x[draw(st.integers(0, rows - 1)), draw(st.integers(0, cols - 1))] = math.nan if values == "nan" else math.inf
    elif values == "huge":
        x *= 1e300
    shape = "2d" if clean else draw(st.sampled_from(["2d", "2d", "1d", "3d", "fortran"]))
    with np.errstate(over="ignore", invalid="ignore"):
        x = x.astype(dtype)
    x = {"1d": x.reshape(-1), "3d": x.reshape(rows, cols, 1), "fortran": np.asfortranarray(x)}.get(shape, x)
    buffer = io.BytesIO()
    np.save(buffer, x)
    return buffer.getvalue() if clean else draw(mutated(buffer.getvalue()))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A completed 1-epoch run on 200 x P features, for reduce (run_local itself: no_work replaces
    the CLI's)."""
    import numpy as np

    from bnnidr_hpc.config.identity import run_dir_for
    from bnnidr_hpc.config.loading import load

    folder = tmp_path_factory.mktemp("trained")
    labels = np.arange(200) % 4
    x = np.random.default_rng(0).normal(size=(4, P))[labels] + 0.2 * np.random.default_rng(1).normal(size=(200, P))
    np.save(folder / "X.npy", x.astype(np.float32))
    np.save(folder / "Y.npy", labels)
    c = load(None, ["data.source=npy", f"data.path={folder / 'X.npy'}", f"data.labels={folder / 'Y.npy'}",
                    "output_dim=2", "layer_size=16", "batch_size=32", "max_epochs=1", "run.progress=false",
                    "run.graph=false", "run.threads=1", f"run.root={folder / 'runs'}"])
    assert REAL_RUN_LOCAL(c, run_dir_for(c))["status"] == "completed"
    return run_dir_for(c)


def no_output_left(folder: Path, name: str, code: int) -> None:
    """A refusal writes nothing; no temporary file survives either way."""
    assert not [p for p in os.listdir(folder) if p.startswith(f".{name}")], os.listdir(folder)
    if code:
        assert not (folder / name).exists()


@FILES
@given(feature_file(), st.sampled_from(["estimate-id", "reduce"]))
def test_damaged_feature_files_are_reduced_estimated_or_refused_in_one_line(trained_run, content, command):
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        mp.setattr("bnnidr_hpc.train.intrinsic.estimate_config", REAL_ESTIMATE)
        path = Path(tmp) / "x.npy"
        path.write_bytes(content)
        if command == "reduce":
            code, _, _ = outcome(["reduce", str(trained_run), str(path), str(Path(tmp) / "z.npy")])
            no_output_left(Path(tmp), "z.npy", code)
        else:
            outcome(["estimate-id", "data.source=npy", f"data.path={path}", "output_dim=2", "batch_size=4",
                     "--sample", "30", f"run.root={Path(tmp) / 'runs'}"])
            assert not (Path(tmp) / "runs").exists()


RUN_FILES = ["config.yaml", "checkpoint.pt", "normalization.npz", "record.json", "heldout.npy"]


@FILES
@given(st.sampled_from(RUN_FILES), st.data())
def test_a_damaged_run_directory_is_reduced_or_refused_in_one_line(trained_run, name, data):
    import shutil

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / trained_run.name
        shutil.copytree(trained_run, run_dir)
        target = run_dir / name
        if data.draw(st.integers(0, 5)) == 0:
            target.unlink()
            if data.draw(st.booleans()):
                target.mkdir()  # a folder where the file was
        else:
            target.write_bytes(data.draw(mutated(target.read_bytes())))
        inputs = trained_run.parents[1] / "X.npy"
        code, _, _ = outcome(["reduce", str(run_dir), str(inputs), str(Path(tmp) / "z.npy"), "--allow-incomplete"])
        no_output_left(Path(tmp), "z.npy", code)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(), st.text(max_size=12)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8)
SLURM_STATES = ["PENDING", "RUNNING", "REQUEUED", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"]
slurm_fields = st.dictionaries(st.sampled_from(["JobState", "Restarts", "Reason", "ExitCode", "NodeList", "StdOut"]),
                               st.one_of(st.sampled_from(SLURM_STATES + ["0", "2", "None"]), st.text(max_size=8)),
                               max_size=4)


def field(plausible):
    """A field: missing (None here, left out), a plausible value, or any JSON value."""
    return st.one_of(st.just(None), plausible, json_values)


@st.composite
def job_file(draw, log: str, config: dict):
    if draw(st.integers(0, 9)) == 0:
        return draw(st.one_of(st.binary(max_size=40), json_values.map(lambda v: json.dumps(v).encode())))
    plausible = {
        "executor": st.sampled_from(["slurm", "local"]), "job_id": st.sampled_from(["123", 123, "123_4"]),
        "stdout": st.just(log), "stderr": st.just(log.replace(".out", ".err")), "final_slurm_state": slurm_fields,
        "earlier_jobs": st.lists(st.fixed_dictionaries({"job_id": st.just("99"), "stdout": st.just(log)}),
                                 max_size=2),
        "config": st.just(config), "slurm_conf": st.just("/nonexistent/slurm.conf"), "gpus_per_node": st.just(1)}
    job = {k: draw(field(v)) for k, v in plausible.items()}
    return json.dumps({k: v for k, v in job.items() if v is not None}).encode()


@st.composite
def record_file(draw):
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=40))
    plausible = {
        "status": st.sampled_from(["running", "completed", "failed", "interrupted", "diverged"]),
        "error": st.text(max_size=30), "restarts": st.integers(0, 3), "epochs_done": st.integers(0, 3),
        "max_epochs": st.just(3), "final_loss": st.floats(0, 1), "ap_out": st.floats(0, 1),
        "epochs": st.lists(st.fixed_dictionaries({"samples_per_s": st.floats(0, 1e6)}), max_size=2),
        "world_size": st.just(1), "total_seconds": st.floats(0, 100), "baselines": st.just({"pca": {"ap": 0.5}})}
    rec = {k: draw(field(v)) for k, v in plausible.items()}
    return json.dumps({k: v for k, v in rec.items() if v is not None}).encode()


class FakeScancel:
    """lifecycle's subprocess: scancel never reaches a real cluster (the job ids here are made up)."""
    TimeoutExpired = __import__("subprocess").TimeoutExpired

    @staticmethod
    def run(argv, **kwargs):
        import subprocess

        assert argv[0] == "scancel", argv
        return subprocess.CompletedProcess(argv, 0, "", "")


@FILES
@given(st.data())
def test_lifecycle_commands_on_damaged_job_and_record_files(data):
    from bnnidr_hpc import cli as cli_module
    from bnnidr_hpc.cluster import lifecycle, submit_report

    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        fields = data.draw(slurm_fields)
        mp.setattr("bnnidr_hpc.cluster.status.job_state", lambda job_id, conf=None: dict(fields))
        mp.setattr(lifecycle, "subprocess", FakeScancel)
        mp.setattr(cli_module, "_need_slurm", lambda local, otherwise: None)
        mp.setattr(submit_report, "check_and_submit", lambda plan, local, force, check_only: True)
        sweep = Path(tmp) / "sweep"
        run_dir = sweep / "hps-1a2b3c4d"
        (run_dir / "slurm").mkdir(parents=True)
        log = run_dir / "slurm" / "123_0_log.out"
        log.write_text("epoch 1\n")
        config = {"data": {"n": 256}, "run": {"root": str(sweep)}}
        (run_dir / "job.json").write_bytes(data.draw(job_file(str(log), config)))
        if data.draw(st.booleans()):
            (run_dir / "record.json").write_bytes(data.draw(record_file()))
        if data.draw(st.booleans()):
            points = field(st.just({run_dir.name: {"config": config}, "hps-refused": {"not_submitted": "no"}}))
            (sweep / "sweep.json").write_text(json.dumps({"points": data.draw(points)}))
        for argv in (["status", str(sweep)], ["status", str(run_dir)], ["logs", str(run_dir)],
                     ["logs", str(run_dir), "--rank", "1"], ["cancel", str(sweep)], ["retry", str(sweep)],
                     ["retry", str(run_dir), "--failed"]):
            outcome(argv)


@FILES
@given(st.integers(1, 4), st.data(),
       st.sampled_from([[], ["--format", "csv"], ["--format", "json"], ["--view", "output_dim"]]))
def test_collect_on_damaged_records(count, data, flags):
    from bnnidr_hpc.records.run_record import SCHEMA

    with tempfile.TemporaryDirectory() as tmp:
        for i in range(count):
            rec = {"schema": SCHEMA, "status": "completed", "world_size": 1, "n": 200, "p": P, "d": 2,
                   "batch_size": 32, "epochs_done": 1, "max_epochs": 1, "steady_epoch_seconds": 1.0,
                   "config": {"data": {"n": 200}, "output_dim": 2, "batch_size": 32}, "ap_out": 0.5,
                   "baselines": {"pca": {"ap": 0.4, "ap_retention": 0.8}}, "ap_retention": 0.9, "num_gpu": 1}
            for key in data.draw(st.lists(st.sampled_from(sorted(rec) + ["epoch_seconds", "hosts", "error"]),
                                          max_size=3)):
                rec[key] = data.draw(json_values)
            folder = Path(tmp) / f"r{i}"
            folder.mkdir()
            blob = json.dumps(rec).encode()
            (folder / "record.json").write_bytes(data.draw(mutated(blob)) if data.draw(st.booleans()) else blob)
        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = cli.main(["collect", tmp, *flags])
        assert code in (0, 1) and "Traceback" not in err.getvalue(), (code, err.getvalue())
        event(f"collect exit {code}")
