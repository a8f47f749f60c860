"""Which process writes, and the one use of JAX's private cluster API (src/training/device/)."""

from __future__ import annotations

import ast
from types import SimpleNamespace

import pytest

from src.training.device import processes
from tests.helpers import REPO

SLURM = {"SLURM_JOB_ID": "1", "SLURM_STEP_NODELIST": "node1", "SLURM_LOCALID": "0"}


@pytest.fixture
def no_cluster(monkeypatch):
    for name in ("SLURM_JOB_ID", "OMPI_MCA_orte_hnp_uri", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    return monkeypatch


def test_jax_still_lists_its_cluster_environments_as_we_use_them():
    """Fails when a JAX release changes jax._src.clusters.ClusterEnv: the private API
    processes.cluster_environments reads. Then find its replacement there."""
    envs = processes.cluster_environments()
    names = [env.__name__ for env in envs]
    assert "SlurmCluster" in names, names
    for env in envs:
        for attribute in ("opt_in_only_method", "is_env_present", "get_process_id"):
            assert hasattr(env, attribute), (env.__name__, attribute)
        assert callable(env.get_process_count), env.__name__


def test_slurm_decides_which_process_writes(no_cluster):
    for name, value in {**SLURM, "SLURM_NTASKS": "2", "SLURM_PROCID": "1"}.items():
        no_cluster.setenv(name, value)
    assert getattr(processes.detected_cluster(), "__name__", None) == "SlurmCluster"
    assert processes.detected_process_count() == 2
    auto = SimpleNamespace(distributed="auto", process_id=-1)
    assert processes.writes_before_start(auto) is False
    no_cluster.setenv("SLURM_PROCID", "0")
    assert processes.writes_before_start(auto) is True


def test_the_config_decides_before_the_cluster(no_cluster):
    for name, value in {**SLURM, "SLURM_NTASKS": "2", "SLURM_PROCID": "0"}.items():
        no_cluster.setenv(name, value)
    assert processes.writes_before_start(SimpleNamespace(distributed="auto", process_id=1)) is False
    assert processes.writes_before_start(SimpleNamespace(distributed="false", process_id=1))


def test_one_process_without_a_cluster_writes(no_cluster):
    assert processes.detected_cluster() is None
    assert processes.writes_before_start(SimpleNamespace(distributed="auto", process_id=-1))
    assert processes.is_writer()


def private_imports(tree: ast.AST) -> list[int]:
    """Lines of tree's imports of jax._src, at any depth."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules = [node.module or ""]
        else:
            continue
        if any(m == "jax._src" or m.startswith("jax._src.") for m in modules):
            lines.append(node.lineno)
    return lines


def test_only_one_function_of_src_imports_jax_private_api():
    found = {}
    for path in sorted((REPO / "src").rglob("*.py")):
        if lines := private_imports(ast.parse(path.read_text())):
            found[str(path.relative_to(REPO))] = lines
    path = REPO / "src" / "training" / "device" / "processes.py"
    function = next(
        node
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef) and node.name == "cluster_environments"
    )
    assert list(found) == ["src/training/device/processes.py"], found
    assert private_imports(function) == found["src/training/device/processes.py"]
    assert private_imports(ast.parse("import jax._src.clusters\nimport jax.numpy")) == [1]
