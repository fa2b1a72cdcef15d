"""Process-group setup: a plain run's child processes choose their own rendezvous port."""

import os
import subprocess
import sys

from dcr_mllm.training import init_distributed


def test_a_child_of_a_plain_run_does_not_reuse_its_port():
    """A one-process run (here: this test process) sets RANK/WORLD_SIZE/MASTER_PORT for itself and
    holds that port; a command it starts inherits them and must not rendezvous there (EADDRINUSE)."""
    info = init_distributed()
    assert info.world_size == 1 and os.environ["MASTER_PORT"]
    child = "from dcr_mllm.training import init_distributed; import os; i = init_distributed(); print(i.world_size, os.environ['MASTER_PORT'])"
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    world_size, port = result.stdout.split()[-2:]
    assert world_size == "1" and port != os.environ["MASTER_PORT"]


def test_a_launcher_port_is_kept():
    """Variables a launcher set (another port than the one a plain run chose) are used as they are."""
    from dcr_mllm.training.distributed import _free_port

    init_distributed()
    launcher_port = str(_free_port())
    env = {
        **os.environ,
        "MASTER_PORT": launcher_port,
        "MASTER_ADDR": "127.0.0.1",
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
    }
    child = "from dcr_mllm.training import init_distributed; import os; init_distributed(); print(os.environ['MASTER_PORT'])"
    result = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == launcher_port


def test_a_child_that_is_no_rank_gets_no_launcher_variables_of_a_plain_run():
    """lmms-eval or accelerate started from a process that trained in-process must not try to bind
    the port that process holds; a real launcher's variables are passed on."""
    from dcr_mllm.training.distributed import SOLO_PORT, child_environment

    solo = {
        "MASTER_PORT": "4000",
        SOLO_PORT: "4000",
        "RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "PATH": "/bin",
    }
    assert child_environment(solo) == {"PATH": "/bin"}
    launched = {**solo, "MASTER_PORT": "5000"}
    assert child_environment(launched) == launched
