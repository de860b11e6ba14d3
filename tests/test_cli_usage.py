"""Usage errors: one line naming the file/key, exit 2, no worker started; init and convert."""

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import cli, report
from harness import config
from harness.cli import app
from harness.errors import ConfigError

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
])
def test_config_errors_name_file_key_and_line(tmp_path, body, needle):
    with pytest.raises(ConfigError) as info:
        config.load(_toml(tmp_path, body))
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_defaults_follow_design(tmp_path):
    cfg = config.load(_toml(tmp_path, ""))
    assert cfg.name == tmp_path.name and cfg.checks == config.CHECKS
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
    pair = config.zoo_dir() / "cnn" / "pair.toml"
    assert cli("convert", "--pair", pair, "--torch-weights", tmp_path / "w.pt", "--out", tmp_path / "w.pdparams").returncode == 0
    proc = cli("convert", "--pair", pair, "--paddle-weights", tmp_path / "w.pdparams", "--out", tmp_path / "back.pt")
    assert proc.returncode == 0, proc.stderr
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    assert set(back) == set(original)
    for k in original:
        np.testing.assert_array_equal(back[k].numpy(), original[k].numpy())
    proc = cli("run", "--zoo", "cnn", "--weights", tmp_path / "w.pdparams", "--checks", "forward", "--out", tmp_path / "o")
    assert proc.returncode == 0, proc.stderr
