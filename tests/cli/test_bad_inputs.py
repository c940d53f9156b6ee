"""Every mistake a user can make on the ``plkit`` command line ends in one short message, never a traceback.

Each row runs ``plkit`` in a process of its own and asserts: a non-zero exit code, no traceback, at most
three lines on stderr, and the bad file, key or value named in them. Importing torch and Lightning costs
about six seconds a process, so the rows run in processes forked from one server that has imported plkit
(and run no torch operation, so nothing is shared that a fork could break); each child redirects its own
stdout and stderr and calls ``plkit.cli.main()`` on ``sys.argv``, exactly as the ``plkit`` script does. The
first rows also run through the real ``plkit`` command, and must print the same.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fakedata import make_mnist

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Row:
    """One bad command line: ``plkit ARGS`` exits with ``code`` and names every one of ``named`` on stderr."""

    args: str
    named: tuple[str, ...]
    code: int = 2


NPY = "fit --model AutoEncoder --model.init_args.input_shape [8] --data NpyDataModule"
NPY += " --seed_everything 0 --trainer.max_epochs 1"
ROWS = [
    # Options and values on the command line.
    Row("fit --config mnist --trainer.max_epochz 3", ("--trainer.max_epochz", "--trainer.max_epochs")),
    Row("fit --config mnist --trainer.max_epoch 1", ("--trainer.max_epoch;", "--trainer.max_epochs")),  # no prefixes
    Row("fit --config mnist --trainer.max_epochs abc", ("trainer.max_epochs", "'abc'")),
    Row("fit --config mnist --trainer.gradient_clip_val high", ("trainer.gradient_clip_val", "'high'")),
    Row("fit --config mnist --trainer.enable_progress_bar maybe", ("trainer.enable_progress_bar", "'maybe'")),
    Row("fit --config mnist --trainer.precision 17", ("trainer.precision", "'17'", "bf16-mixed")),
    Row("fit --config mnist --data.init_args.data_dri x", ("data_dri", "'data_dir'")),
    Row("fit --config mnist --data.batch_sise 8", ("batch_sise", "'batch_size'")),
    Row("fit --config mnist --model.init_args.num_clases 3", ("num_clases", "'num_classes'")),
    Row("fit --config mnist --model.init_args.lr 0.01", ("model.init_args.lr", "optimizer.init_args.lr")),
    Row("fit --config mnist --model.init_args.num_classes ten", ("model.init_args.num_classes", "'ten'")),
    Row("fit --config mnist --model.class_path ImageClasifier", ("'ImageClasifier'", "'ImageClassifier'")),
    Row("fit --config mnist --data.class_path MNISTDataModul", ("'MNISTDataModul'", "'MNISTDataModule'")),
    Row("fit --config mnist --model.class_path nowhere.Model", ("'nowhere.Model'",)),
    Row("fit --config mnist --model.init_args.optimizer.class_path torch.optim.Adamm", ("torch.optim.Adamm",)),
    Row("fit --config mnist --trainer.callbacks+=Nope", ("trainer.callbacks", "'Nope'")),
    Row("fit --config mnist --checkpoint.monitr val/acc", ("--checkpoint.monitr", "--checkpoint.monitor")),
    Row("fit --config mnist --checkpoint.mode maximum", ("checkpoint.mode", "'maximum'")),
    Row("fit --config mnist --print_config=foo", ("foo",)),
    Row("check --config mnist --trainer.max_epoch 2", ("--trainer.max_epoch;", "plkit check")),
    # Config files.
    Row("fit --config mnst", ("mnst", "'mnist'")),
    Row("fit --config missing.yaml", ("missing.yaml",)),
    Row("fit --config adir", ("adir", "folder")),
    Row("fit --config empty.yaml", ("empty.yaml", "empty")),
    Row("fit --config syntax.yaml", ("syntax.yaml", "line 3")),
    Row("fit --config list.yaml", ("list.yaml",)),
    Row("fit --config mnist --config badkey.yaml", ("badkey.yaml", "max_epohcs", "'trainer.max_epochs'")),
    Row("fit --config mnist --config badtop.yaml", ("badtop.yaml", "trainr", "'trainer.max_epochs'")),
    Row("fit --config mnist --config badval.yaml", ("badval.yaml", "trainer.max_epochs", "'abc'")),
    Row("fit --config mnist --config badclass.yaml", ("badclass.yaml", "'ImageClasifier'")),
    Row("--config badkey.yaml fit", ("badkey.yaml", "max_epohcs")),
    # Commands and verbs.
    Row("trian", ("'trian'", "fit")),
    Row("--config mnist", ("name the verb",)),
    Row("--config mnist check", ("'check'", "plkit check --config")),
    Row("fit --config mnist --trainer.logger false --trainer.logger.version 3", ("--trainer.logger.version", "CLASS")),
    Row("fit --config mnist extra", ("'extra'",)),
    Row("test", ("test needs a model", "--ckpt_path")),
    Row("fit", ("fit needs a model", "--config")),
    Row("validate --config mnist --run_test true", ("--run_test", "fit")),
    # Checkpoints.
    Row("test --config mnist --ckpt_path random.ckpt", ("random.ckpt", "not a readable checkpoint")),
    Row("test --ckpt_path random.ckpt", ("random.ckpt", "not a readable checkpoint")),
    Row("predict --ckpt_path zero.ckpt", ("zero.ckpt", "not a readable checkpoint")),
    Row("fit --config mnist --ckpt_path zero.ckpt", ("zero.ckpt", "not a readable checkpoint")),
    Row("test --config mnist --ckpt_path plain.ckpt", ("plain.ckpt", "not a Lightning checkpoint")),
    Row("test --config mnist --ckpt_path nofile.ckpt", ("nofile.ckpt", "no such file")),
    Row("test --config mnist --ckpt_path autoencoder.ckpt", ("autoencoder.ckpt", "AutoEncoder", "ImageClassifier")),
    Row("test --config mnist --ckpt_path last", ("--ckpt_path last", "last.ckpt")),
    Row("test --ckpt_path best", ("--ckpt_path best", "--config")),
    # plkit's own commands.
    Row("recipes show mnst", ("'mnst'", "'mnist'")),
    Row("recipes copy mnist existing.yaml", ("existing.yaml", "--force")),
    Row("report /nonexistent/run", ("/nonexistent/run",)),
    # Mistakes found once the run starts.
    Row("fit --config mnist --config tiny.yaml --model.init_args.in_channels 3", ("in_channels: 1",), 1),
    Row("fit --config mnist --config tiny.yaml --trainer.accelerator gpux", ("'gpux'",), 1),
    Row("fit --config mnist --config tiny.yaml --trainer.max_epochs -3", ("max_epochs", "-3"), 1),
    Row("fit --config mnist --config tiny.yaml --model.init_args.num_classes 0", ("num_classes=0",), 1),
    Row("fit --config mnist --config tiny.yaml --model.init_args.backbone nope", ("'nope'",), 1),
    # Data (the messages are the data modules'): missing files, a mistyped folder with download on, .npy files.
    Row("fit --config mnist --data.data_dir emptydir --data.download false", ("emptydir",), 1),
    Row("fit --config mnist --data.data_dir /nonexistent/mnist", ("/nonexistent/mnist",), 1),
    Row(f"{NPY} --data.features strings.npy", ("strings.npy",), 1),
    Row(f"{NPY} --data.features flat.npy", ("input_shape to [1]",), 1),  # advice the next run accepts
]

REAL_COMMAND_ROWS = 3

SERVER = textwrap.dedent(
    """
    import json, os, sys, time, traceback
    import plkit.cli.lightning_cli  # torch, Lightning and plkit imported once; no torch op runs here
    from plkit.cli import main

    for line in sys.stdin:
        case = json.loads(line)
        pid = os.fork()
        if pid == 0:
            os.chdir(case["cwd"])
            for fd, path in ((1, case["stdout"]), (2, case["stderr"])):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            sys.argv = ["plkit", *case["args"]]
            try:  # what the interpreter does with the console script's sys.exit(main())
                main()
                code = 0
            except SystemExit as exit:
                code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
                if isinstance(exit.code, str):
                    print(exit.code, file=sys.stderr)
            except BaseException:
                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        deadline = time.monotonic() + case["timeout"]
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                code = "timeout"
                break
            time.sleep(0.05)
        print(json.dumps({"code": code}), flush=True)
    """
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files the rows name: broken configs and checkpoints, tiny data, .npy arrays."""
    work = tmp_path_factory.mktemp("bad_inputs")
    mnist = make_mnist(work / "mnist")
    (work / "empty.yaml").write_text("")
    (work / "syntax.yaml").write_text("trainer:\n  max_epochs: [1\n")
    (work / "list.yaml").write_text("- a\n- b\n")
    (work / "badkey.yaml").write_text("trainer:\n  max_epohcs: 2\n")
    (work / "badtop.yaml").write_text("trainr:\n  max_epochs: 2\n")
    (work / "badval.yaml").write_text("trainer:\n  max_epochs: abc\n")
    (work / "badclass.yaml").write_text("model:\n  class_path: ImageClasifier\n")
    (work / "existing.yaml").write_text("# mine\n")
    (work / "adir").mkdir()
    (work / "emptydir").mkdir()
    (work / "random.ckpt").write_bytes(np.random.default_rng(0).bytes(256))
    (work / "zero.ckpt").write_bytes(b"")
    torch.save({"weights": torch.zeros(2)}, work / "plain.ckpt")
    torch.save(
        {"state_dict": {}, "hyper_parameters": {"_class_path": "plkit.models.AutoEncoder"}}, work / "autoencoder.ckpt"
    )
    np.save(work / "strings.npy", np.array([["a"] * 8] * 20))
    np.save(work / "flat.npy", np.arange(20, dtype=np.float32))
    tiny = {
        "trainer": {"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1, "enable_progress_bar": False},
        "data": {"init_args": {"data_dir": str(mnist), "val_size": 64, "batch_size": 32}},
    }
    (work / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    return work


@pytest.fixture(scope="module")
def plkit_process(workdir: Path) -> Iterator[subprocess.Popen]:
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=workdir
    )
    yield server
    server.stdin.close()
    server.wait(timeout=60)


def run_forked(server: subprocess.Popen, args: list[str], cwd: Path, tag: str) -> tuple[int, str, str]:
    out, err = cwd / f".{tag}.out", cwd / f".{tag}.err"
    case = {"args": args, "cwd": str(cwd), "stdout": str(out), "stderr": str(err), "timeout": 240}
    server.stdin.write(json.dumps(case) + "\n")
    server.stdin.flush()
    code = json.loads(server.stdout.readline())["code"]
    return code, out.read_text(), err.read_text()


@pytest.mark.parametrize(
    "row",
    ROWS,
    ids=[r.args for r in ROWS],
)
def test_a_mistake_is_one_short_message(row: Row, workdir: Path, plkit_process: subprocess.Popen) -> None:
    index = ROWS.index(row)
    code, _, err = run_forked(plkit_process, row.args.split(), workdir, f"row{index}")
    lines = err.splitlines()
    assert code == row.code, err
    assert "Traceback" not in err
    assert 1 <= len(lines) <= 3, err
    for name in row.named:
        assert name in err, f"{name!r} not named in: {err}"
    if index < REAL_COMMAND_ROWS:
        real = subprocess.run(
            [sys.executable, "-m", "plkit", *row.args.split()],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert (real.returncode, real.stderr) == (code, err)


def test_there_are_forty_rows_or_more() -> None:
    assert len(ROWS) >= 40
    assert len({r.args for r in ROWS}) == len(ROWS)
