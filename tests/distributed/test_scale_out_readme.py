"""The README's Scale out commands are exactly the ones the distributed tests run (this runs in the default suite)."""

from __future__ import annotations

from dist_helpers import REPO, readme_command, scale_out_commands


def test_every_scale_out_command_is_one_the_distributed_tests_run() -> None:
    tested = [
        readme_command("torchrun", " fit "),  # conftest.two_nodes, test_torchrun
        readme_command("torchrun", " predict "),  # conftest.two_nodes
        readme_command("sbatch"),  # test_slurm
    ]
    assert sorted(scale_out_commands()) == sorted(tested)
    assert "sbatch slurm/fit.sbatch " in tested[2]
    assert (REPO / "slurm" / "fit.sbatch").is_file()


def test_ci_runs_the_distributed_tests_with_slurm_installed() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    assert "apt-get install -y -q --no-install-recommends slurm-wlm munge" in ci
    assert ci.index("slurm-wlm munge") < ci.index(".venv/bin/pytest -m distributed")
