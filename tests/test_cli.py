"""The CLI: plan output, and bad input → one clear paragraph, exit code 2, nothing written."""

import json

import pytest
import torch

from tdc_agent.models.unet import build_unet, unet_config
from tdc_agent.models.store import save_model


def test_plan_json_and_files(cli, make_config, tmp_path):
    code, out, _ = cli("plan", "--config", make_config(), "--groups", "4", "--timesteps", "200", "--json",
                       "--out", tmp_path / "p")
    assert code == 0
    d = json.loads(out)
    assert d["n_groups"] == 4 and d["timesteps"] == 200
    assert d["groups"][-1]["limit_fraction"] == pytest.approx(1.0)
    assert (tmp_path / "p" / "plan.json").is_file() and (tmp_path / "p" / "plan.png").stat().st_size > 1000


def test_plan_table_with_preset_shows_macs(cli, make_config, tmp_path):
    code, _, err = cli("plan", "--config", make_config(), "--preset", "tiny", "--shape", "constant",
                       "--out", tmp_path / "p")
    assert code == 0
    assert "limit (MACs)" in err and "constant" in err


@pytest.mark.parametrize(
    "args,needle",
    [
        (["plan.k=1.5"], "plan.k"),
        (["plan.groups=0"], "plan.groups"),
        (["schedule.name=sigmoid"], "schedule.name"),
        (["data.name=mnist"], "data.name"),
        (["model.preset=huge"], "model.preset"),
        (["data.name=imagefolder", "data.root=/no/such/dir"], "data.root"),
        (["data.name=cifar10", "data.root=/no/such/dir"], "data.download=true"),
    ],
)
def test_train_base_bad_input_exit_2_nothing_written(cli, make_config, tmp_path, args, needle):
    code, _, err = cli("train-base", "--config", make_config(), "--run-dir", tmp_path / "run", "-q", *args)
    assert code == 2
    assert needle in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda(cli, make_config, tmp_path):
    code, _, err = cli("train-base", "--config", make_config(), "--device", "cuda", "--run-dir", tmp_path / "r")
    assert code == 2 and "no usable CUDA" in err and not (tmp_path / "r").exists()


def test_resume_with_other_architecture_is_refused(cli, make_config, tmp_path):
    cfg = make_config(stage1={"steps": 2})
    assert cli("train-base", "--config", cfg, "--run-dir", tmp_path / "r", "-q")[0] == 0
    code, _, err = cli("train-base", "--config", cfg, "--run-dir", tmp_path / "r", "-q", "model.preset=ddpm-cifar10")
    assert code == 2 and "different config" in err and "model.preset" in err
    # a checkpoint from another architecture, even with a matching config file, is caught too
    (tmp_path / "r" / "stage1" / "model").rename(tmp_path / "r" / "stage1" / "model_gone")
    torch.manual_seed(0)
    other = build_unet(unet_config("tiny", channels=3))
    save_model(tmp_path / "other", other)
    ckpt = tmp_path / "r" / "stage1" / "checkpoint"
    (ckpt / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    code, _, err = cli("train-base", "--config", cfg, "--run-dir", tmp_path / "r", "-q")
    assert code == 2 and "do not match" in err


def test_sample_missing_model(cli, tmp_path):
    code, _, err = cli("sample", "--model", tmp_path / "nope")
    assert code == 2 and "does not exist" in err


def test_help_lists_verbs(cli):
    code, out, _ = cli("--help")
    assert code == 0
    for verb in ("plan", "train-base", "sample"):
        assert verb in out


def test_inspect_json_is_compact(cli):
    code, out, _ = cli("inspect", "--preset", "ddpm-cifar10", "--json")
    assert code == 0
    d = json.loads(out)
    assert len(out) < 8000 and len(d["units"]) > 10
    assert {"name", "role", "channels", "quantum", "macs_share", "params"} <= set(d["units"][0])


def test_prune_cli_macs_fraction_and_group(cli, make_config, tmp_path):
    cfg = make_config()
    code, out, _ = cli("prune", "--preset", "tiny", "--macs-fraction", "0.6", "--out", tmp_path / "a", "--json",
                       "--config", cfg)
    assert code == 0
    d = json.loads(out)
    assert d["macs_thop"] <= d["limit_macs"] and d["fill"] >= 0.95
    assert (tmp_path / "a" / "model" / "pruning.json").is_file()
    code, out, _ = cli("prune", "--preset", "tiny", "--method", "group-taylor", "--group", "0", "--out",
                       tmp_path / "b", "--json", "--config", cfg)
    assert code == 0
    d = json.loads(out)
    assert d["group"] == 0 and d["limit_fraction"] < 1.0


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--method", "magic", "--macs-fraction", "0.5"], "--method"),
        (["--macs-fraction", "1.5"], "--macs-fraction"),
        (["--macs-fraction", "0.01"], "below what"),
        (["--group", "7"], "does not exist"),
        ([], "exactly one of --macs-fraction"),
    ],
)
def test_prune_cli_bad_input(cli, make_config, tmp_path, args, needle):
    code, _, err = cli("prune", "--preset", "tiny", "--out", tmp_path / "o", "--config", make_config(), *args)
    assert code == 2 and needle in err
    assert not (tmp_path / "o").exists()


def test_prune_cli_scheme_file_with_unknown_unit(cli, make_config, tmp_path):
    (tmp_path / "s.json").write_text(json.dumps({"levels": {"conv_inn": 0.5}}))
    code, _, err = cli("prune", "--preset", "tiny", "--macs-fraction", "0.7", "--scheme", tmp_path / "s.json",
                       "--out", tmp_path / "o", "--config", make_config())
    assert code == 2 and "did you mean conv_in" in err.replace("\n", " ")


def test_prompts_init_refuses_to_overwrite_without_force(cli, tmp_path):
    d = tmp_path / "p"
    code, _, err = cli("prompts", "init", d)
    assert code == 0 and "system.md" in err and (d / "round.md").is_file()
    (d / "round.md").write_text("mine")
    code, _, err = cli("prompts", "init", d)
    assert code == 2 and "--force" in err and "round.md" in err and "Traceback" not in err
    assert (d / "round.md").read_text() == "mine"
    assert cli("prompts", "init", d, "--force")[0] == 0
    assert (d / "round.md").read_text() != "mine" and cli("prompts", "validate", "--prompt-dir", d)[0] == 0
    (tmp_path / "f").write_text("x")
    assert cli("prompts", "init", tmp_path / "f")[0] == 2


def test_run_with_nonexistent_group_fails_before_writing(cli, make_config, tmp_path):
    # the groups used to be checked inside the pipeline, after config.yaml and logs/ were written
    code, _, err = cli("run", "--config", make_config(), "--run-dir", tmp_path / "run", "--groups", "99", "-q")
    assert code == 2
    assert "99" in err and "0..2" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_error_message_brackets_are_printed_as_text(cli):
    # the message is printed through rich: "[low, high]" used to be swallowed as a markup tag
    code, _, err = cli("plan", "plan.snr_clip=[20,-20]")
    assert code == 2 and "[low, high]" in err and "plan.snr_clip" in err


@pytest.mark.parametrize("method", ["magnitude", "agent"])
def test_prune_preset_that_does_not_fit_the_data_is_refused_before_work(cli, tmp_path, method):
    out = tmp_path / "out"
    code, _, err = cli("prune", "--preset", "ddpm-cifar10", "--macs-fraction", "0.8", "--method", method, "--out", out)
    assert code == 2 and "disagree" in err and "data.image_size=8 data.channels=1" in err
    assert "Traceback" not in err and not out.exists()


def test_images_the_unet_cannot_take_fail_before_the_run_dir_is_written(cli, make_config, tmp_path):
    import numpy as np

    np.savez(tmp_path / "d.npz", images=np.random.default_rng(0).random((8, 9, 9, 1)).astype(np.float32))
    run = tmp_path / "r"
    for verb in ("run", "train-base"):
        code, _, err = cli(verb, "--config", make_config(data={"name": "npz", "root": str(tmp_path / "d.npz")}),
                           "--run-dir", run)
        assert code == 2 and "1x9x9" in err and "divisible by 2" in err, err
        assert not run.exists()


def test_sample_seed_out_of_range_is_a_usage_error(cli, tmp_path):
    code, out, err = cli("sample", "--model", tmp_path, "--seed", "99999999999999999999")
    assert code == 2 and "out of range" in err and "Traceback" not in out + err


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 512 KiB tmpfs (root only; skipped where mounting is not allowed)."""
    import subprocess

    d = tmp_path / "fs"
    d.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(d)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root): disk-full and read-only cases not exercised")
    yield d
    subprocess.run(["umount", "-l", str(d)], capture_output=True)


def test_disk_full_and_read_only_are_one_paragraph(cli, make_config, small_tmpfs):
    import subprocess

    code, _, err = cli("train-base", "--config", make_config(), "--run-dir", small_tmpfs / "r", "-q")
    assert code == 2 and "No space left on device" in err and "rerun the same command" in err, err
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    code, _, err = cli("train-base", "--config", make_config(), "--run-dir", small_tmpfs / "r2", "-q")
    assert code == 2 and "read-only" in err.lower() and "Traceback" not in err, err


def test_prune_scheme_file_must_be_an_object(cli, tmp_path):
    (tmp_path / "s.json").write_text("[0.5, 0.5]")
    code, _, err = cli("prune", "--preset", "tiny", "--macs-fraction", "0.6", "--scheme", tmp_path / "s.json",
                       "--out", tmp_path / "out")
    assert code == 2 and "JSON object" in err and "Traceback" not in err


def test_memory_list_on_a_corrupt_bank_or_dead_url_is_one_message(cli, tmp_path):
    import socket

    bank = tmp_path / "memory"
    bank.mkdir()
    (bank / "chroma.sqlite3").write_bytes(b"this is not a sqlite database" * 100)
    code, _, err = cli("memory", "list", "--memory-dir", bank)
    assert code == 2 and "memory bank" in err and "Traceback" not in err, err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = cli("memory", "list", "--memory-url", f"http://127.0.0.1:{port}")
    assert code == 2 and "does not answer" in err and "Traceback" not in err, err


def test_agent_prune_with_a_dead_memory_leaves_nothing_behind(cli, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    code, _, err = cli("prune", "--method", "agent", "--preset", "tiny", "--macs-fraction", "0.6", "--memory-url",
                       f"http://127.0.0.1:{port}", "--out", out)
    assert code == 2 and "memory bank" in err and "Traceback" not in err, err
    assert not out.exists()
