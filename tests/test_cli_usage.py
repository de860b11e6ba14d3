"""Usage errors: one line naming the file/key, exit 2, no worker started; init and convert."""

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import cli, report
from harness.cli import app
from harness.config import parse, schema
from harness.errors import ConfigError, UsageError

runner = CliRunner()


def _toml(tmp_path, body: str):
    (tmp_path / "pair.py").write_text("def build_torch(): pass\ndef build_paddle(): pass\ndef make_batch(rng, step): pass\n")
    path = tmp_path / "pair.toml"
    path.write_text('pair = "pair.py"\n' + body)
    return path


@pytest.mark.parametrize("body,needle", [
    ("[optimizer]\nnmae = 'sgd'\n", "pair.toml:3: optimizer.nmae: unknown key 'nmae' in [optimizer] (did you mean 'name'?)"),
    ("[data]\nbatch_size = 'eight'\n", "pair.toml:3: data.batch_size: expected an integer, got str 'eight'"),
    ("[optimizer]\nname = 'adamm'\n", "did you mean 'adam'"),
    ("[loss]\nkind = 'xent'\n", "loss.kind"),
    ("[tolerance]\nforwrd = 1e-6\n", "did you mean 'forward'"),
    ("[tolerance]\nforward = {mean = 1e-6, maxx = 1}\n", "tolerance.forward.maxx"),
    ("[train]\niters = 0\n", "train.iters: must be >= 1"),
    ("[optimizer]\nname = 'sgd'\nweight_decay = 0.1\ndecay = 'decoupled'\n", "needs name = \"adamw\""),
    ("checks = ['forward', 'speed']\n", "unknown check 'speed'"),
    ("[lr_scheduler]\nname = 'cosine_warmpu'\n", "did you mean 'cosine_warmup'"),
    ("name = 'x'\n[data\n", "not valid TOML"),
    ("checks = ['forward', 'loss']\n[data]\nlabels = []\n", "data.labels: is empty, but the loss check(s) compute"),
    ("[data]\nlabels = []\n[loss]\nkind = 'pair'\n", "but the metric, train check(s) compute"),
])
def test_config_errors_name_file_key_and_line(tmp_path, body, needle):
    with pytest.raises(ConfigError) as info:
        parse.load(_toml(tmp_path, body))
    assert needle in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("body,needle", [
    # a key's line is found within its own table, never a same-named key elsewhere
    ("name = 'x'\n[optimizer]\nname = 'adamW'\n", "pair.toml:4: optimizer.name: unknown optimizer 'adamW'"),
    ("[loss]\nkind = 'mse'\n[metric]\nkind = 'acurracy'\n", "pair.toml:5: metric.kind:"),
    ("[tolerance]\nloss = 1e-6\nforward = {mean = 1e-6, maxx = 1}\n", "pair.toml:4: tolerance.forward.maxx"),
    ("[train]\niters = 2\n[data]\niters = 3\n", "pair.toml:5: data.iters: unknown key"),
    ("optimizer.lr = -1\n", "pair.toml:2: optimizer.lr: must be > 0"),
])
def test_config_errors_point_at_the_keys_own_line(tmp_path, body, needle):
    with pytest.raises(ConfigError) as info:
        parse.load(_toml(tmp_path, body))
    assert needle in str(info.value), str(info.value)


BIG, LONG = "a" * 20_000_000, "a" * 2_000_000
HOSTILE_CONFIGS = {
    "a duplicate key": ("[data]\nseed = 1\nseed = 2\n", "pair.toml:4: data.seed: set twice (first at line 3)"),
    "a duplicate dotted key": ("a.b = 1\na.b = 2\n", "pair.toml:3: a.b: set twice (first at line 2)"),
    "a duplicate table": ("[data]\nseed = 1\n[data]\n", "pair.toml:4: [data]: declared twice (first at line 2)"),
    "a 20 MB value": (f"name = '{BIG}'\n", "pair.toml:2: name: expected a simple name"),
    "a 2 MB key": (f"{LONG} = 1\n", "... (2000000 characters): unknown key 'aaaa"),
    "a 2 MB choice": (f"[loss]\nkind = '{LONG}'\n", "pair.toml:3: loss.kind: 'aaaa"),
    "a line break in a value": ('[loss]\nkind = "a\\nb"\n', "loss.kind: 'a\\nb' is not one of"),
}


@pytest.mark.parametrize("case", list(HOSTILE_CONFIGS))
def test_every_config_error_is_one_readable_line(tmp_path, case):
    body, needle = HOSTILE_CONFIGS[case]
    result = runner.invoke(app, ["run", str(_toml(tmp_path, body)), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and len(result.output) < 600, result.output[:600]
    assert needle in result.output, result.output


@pytest.mark.parametrize("pair", ["/etc/passwd", "pair.txt", "x" * 5000])
def test_a_pair_that_is_no_python_file_is_a_config_error_naming_the_key(tmp_path, pair):
    (tmp_path / "pair.txt").write_text("def build_torch(): pass\n")
    toml = tmp_path / "pair.toml"
    toml.write_text(f'pair = "{pair}"\n')
    result = runner.invoke(app, ["run", str(toml), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {toml}:1: pair: "), result.output
    assert result.output.count("\n") == 1 and len(result.output) < 600 and pair[:60] in result.output


@pytest.mark.parametrize("body,hint", [
    ("[optimizer]\nname = 'adamW'\n", "did you mean 'adamw'"),  # case-insensitive, not 'adam'
    ("[optimizer]\nname = 'SGD'\n", "did you mean 'sgd'"),
    ("[optimizer]\nlearning_rate = 0.1\n", "did you mean 'lr'"),
    ("[optimizer]\nepsilon = 1e-8\n", "did you mean 'eps'"),
    ("[optimizer]\nbetas = [0.9, 0.99]\n", "did you mean 'beta1' and 'beta2'"),
    ("[optimizer]\nbeta_1 = 0.9\n", "did you mean 'beta1'"),
    ("[optimizer]\nuse_nesterov = true\n", "did you mean 'nesterov'"),
    ("[lr_scheduler]\nboundaries = [2, 4]\n", "did you mean 'milestones'"),
    ("[lr_scheduler]\nT_max = 10\n", "did you mean 'total_steps'"),
    ("[lr_scheduler]\nname = 'StepLR'\n", "did you mean 'step'"),
    ("[lr_scheduler]\nname = 'CosineAnnealingDecay'\n", "did you mean 'cosine'"),
    ("[loss]\nkind = 'CrossEntropyLoss'\n", "did you mean 'cross_entropy'"),
    ("[scheduler]\nname = 'step'\n", "did you mean 'lr_scheduler'"),
])
def test_did_you_mean_ignores_case_and_knows_other_spellings(tmp_path, body, hint):
    with pytest.raises(ConfigError) as info:
        parse.load(_toml(tmp_path, body))
    assert hint in str(info.value), str(info.value)


def _template_lines():
    """(section, key, value text, comment, commented) for every assignment in init's pair.toml."""
    import re

    section, rows = "", []
    for raw in (parse.templates_dir() / "pair.toml").read_text().splitlines():
        header = re.match(r"^\[(\w+)\]", raw)
        if header:
            section = header.group(1)
            continue
        m = re.match(r'^(#\s*)?("[^"]+"|\w+)\s*=\s*(.*?)\s*(?:#\s*(.*))?$', raw)
        if m and not (m.group(1) and not re.match(r"^#\s*[\w\"]+\s*=", raw)):
            rows.append((section, m.group(2).strip('"'), m.group(3), m.group(4) or "", bool(m.group(1))))
    return rows


@pytest.mark.e2e  # starts a process (the data worker, or the CLI)
def test_labels_are_needed_only_by_a_check_that_reads_them(tmp_path):
    """A forward-only run, or one with its own loss and metric, needs no label key: not in [data], not in the batch."""
    from harness.pair.batches import BatchSource

    (tmp_path / "pair.py").write_text("import numpy as np\nimport torch, paddle\ndef build_torch(): pass\n"
                                      "def build_paddle(): pass\ndef make_batch(rng, step):\n"
                                      "    return {'x': np.zeros((2, 3), np.float32)}\n")
    for body in ("checks = ['forward']\n", "checks = ['forward']\n[data]\nlabels = []\n",
                 "[data]\nlabels = []\n[loss]\nkind = 'pair'\n[metric]\nkind = 'pair'\n"):
        (tmp_path / "pair.toml").write_text('pair = "pair.py"\n' + body)
        cfg = parse.load(tmp_path / "pair.toml")
        assert cfg.label_readers == [] and list(BatchSource(cfg).batch(0)) == ["x"], body
    (tmp_path / "pair.toml").write_text('pair = "pair.py"\nchecks = ["forward", "metric"]\n')
    with pytest.raises(UsageError, match=r"name \[.label.\], which the metric check\(s\) read"):
        BatchSource(parse.load(tmp_path / "pair.toml")).batch(0)


def test_init_writes_every_section_and_option_with_its_default():
    import dataclasses

    import tomllib

    from harness.verdict.tolerance import ToleranceConfig

    rows = _template_lines()
    written = {(sec, key) for sec, key, *_ in rows}
    for sec, cls in schema.SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert (sec, f.name) in written, f"init's pair.toml lacks [{sec}] {f.name}"
    for check in parse.TOLERANCED:
        assert ("tolerance", check) in written
    assert {("", "name"), ("", "pair"), ("", "checks")} <= written
    for sec, key, value, comment, commented in rows:
        cls = schema.SECTIONS.get(sec)
        field = next((f for f in dataclasses.fields(cls) if f.name == key), None) if cls else None
        if field is None:
            continue
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        parsed = tomllib.loads(f"v = {value}")["v"]
        if default is None or parsed != default:  # a value that is not the default says what the default is
            assert "default:" in comment, (sec, key, value, comment)
        else:
            assert commented or "default" not in comment, (sec, key)
    tol = ToleranceConfig()
    for sec, key, value, _, _ in rows:
        if sec == "tolerance" and key in parse.TOLERANCED:
            expected = getattr(tol, key)
            assert tomllib.loads(f"v = {value}")["v"] == (expected.rtol if expected.rtol else expected.mean), key


def test_init_template_is_a_valid_config(tmp_path):
    from typer.testing import CliRunner as Runner

    assert Runner().invoke(app, ["init", str(tmp_path / "p")]).exit_code == 0
    cfg = parse.load(tmp_path / "p" / "pair.toml")
    assert cfg.optimizer.name == "adamw" and cfg.distributed.nprocs == 1 and cfg.tolerance.train.rtol == 0.0015


def test_defaults_follow_design(tmp_path):
    cfg = parse.load(_toml(tmp_path, ""))
    assert cfg.name == tmp_path.name and cfg.checks == schema.DEFAULT_CHECKS and "init" not in cfg.checks
    assert cfg.data.seed == 0 and cfg.data.eval_batches == 4 and cfg.loss.kind == "cross_entropy"
    assert cfg.tolerance.forward.mean == 1e-6 and cfg.tolerance.lr.mean == 1e-9 and cfg.tolerance.train.rtol == 0.0015
    assert cfg.distributed.nprocs == 1 and cfg.distributed.backend == "auto"


@pytest.mark.parametrize("args,needle", [
    (["run"], "give exactly one of PAIR_TOML or --zoo"),
    (["run", "--zoo", "mpl"], "did you mean 'mlp'"),
    (["run", "nope.toml"], "nope.toml: config file not found"),
    (["run", "--zoo", "mlp", "--checks", "forward,bogus"], "--checks: unknown check 'bogus'"),
    (["run", "--zoo", "mlp", "--weights", "x.ckpt"], "unknown checkpoint type"),
    (["compare", "a.npy"], "Missing argument"),
])
def test_cli_usage_errors_exit_2(args, needle):
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and needle in res.output, res.output


@pytest.mark.e2e  # starts a process (the data worker, or the CLI)
def test_pair_module_missing_functions_and_bad_make_batch(make_pair, tmp_path):
    toml = make_pair("import numpy as np\ndef build_torch(): pass\n", name="missing")
    res = runner.invoke(app, ["run", str(toml)])
    assert res.exit_code == 2 and "must define build_paddle, make_batch" in res.output
    toml = make_pair("import torch\nimport numpy as np\ndef build_torch(): pass\ndef build_paddle(): pass\n"
                     "def make_batch(rng, step):\n    return {'x': torch.zeros(3)}\n", name="torchbatch")
    res = runner.invoke(app, ["run", str(toml)])
    assert res.exit_code == 2 and "make_batch must return numpy arrays" in res.output


@pytest.mark.e2e
def test_init_writes_a_pair_that_runs(tmp_path):
    res = runner.invoke(app, ["init", str(tmp_path / "p")])
    assert res.exit_code == 0
    assert runner.invoke(app, ["init", str(tmp_path / "p")]).exit_code == 2  # no silent overwrite
    proc = cli("run", tmp_path / "p" / "pair.toml", "--out", tmp_path / "o")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert report(tmp_path / "o")["aligned"]


@pytest.mark.e2e
def test_convert_round_trip_and_run_from_a_paddle_checkpoint(tmp_path):
    import torch

    from backends.zoo.cnn.pair import build_torch

    torch.manual_seed(3)
    original = build_torch().state_dict()
    torch.save(original, tmp_path / "w.pt")
    pair = parse.zoo_dir() / "cnn" / "pair.toml"
    assert cli("convert", "--pair", pair, "--torch-weights", tmp_path / "w.pt", "--out", tmp_path / "w.pdparams").returncode == 0
    proc = cli("convert", "--pair", pair, "--paddle-weights", tmp_path / "w.pdparams", "--out", tmp_path / "back.pt")
    assert proc.returncode == 0, proc.stderr
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    assert set(back) == set(original)
    for k in original:
        np.testing.assert_array_equal(back[k].numpy(), original[k].numpy())
    proc = cli("run", "--zoo", "cnn", "--weights", tmp_path / "w.pdparams", "--checks", "forward", "--out", tmp_path / "o")
    assert proc.returncode == 0, proc.stderr
