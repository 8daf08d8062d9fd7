"""Property-based bad input: every generated override or YAML file is wrong, so every command must
refuse it the same way: exit status 2, one line "bnnidr-hpc: ..." on stderr, no traceback, and
nothing created (run.root, or anything next to the config file).

cli.main runs in-process (a subprocess costs a second of imports per example). Each value below is
invalid for its key whatever the rest of the config says, so a pass is never luck.
"""

import contextlib
import io
import math
import os
import string
import tempfile
from pathlib import Path

import pytest
import yaml
from conftest import CONF
from hypothesis import HealthCheck, Phase, given, settings
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
# 100 examples per test keep the file near 30 s on 2 cores; BNNIDR_FUZZ_EXAMPLES=2000 fuzzes deeper.
# No explain phase: it traces every line Hydra runs while replaying a failure, which took many GB.
FUZZ = settings(max_examples=int(os.environ.get("BNNIDR_FUZZ_EXAMPLES", 100)), deadline=None, database=None,
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
