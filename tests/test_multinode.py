"""Several machines: the layout a scheduler describes (`rlhf.cluster`) and two "nodes" on localhost.

Each node is its own `python -m rlhf train-reward|tune` process, started with the environment a
scheduler gives it: `CLUSTER_SPEC` as Vertex AI sets it (pool 0 = node 0, the master's address and
port; pool 1 = the other node), or Kubeflow Trainer's `PET_*`. Each runs one gloo process of one
thread, so the two form one job of world size 2, which must be the job a 1-node 2-process run is
(`tests/test_multiprocess.py`): the same ranks, the same shards of every batch, the same two-way
all-reduce. Reward and PPO metrics and weights agree with that run to 1e-6 (seen: equal to the last
bit; the margin only allows a reduction order that gloo does not promise), and through it with a
1-process run at the same global batch to test_multiprocess's 1e-4 / 1e-3.

Also: only global rank 0 writes and prints (with one process per node every process is local rank
0, so a local-rank check would write twice); a killed node stops the other one with one line within
seconds, not a hang (every wait here has a timeout: NODE_TIMEOUT, RLHF_RENDEZVOUS_TIMEOUT_S); the job
restarted on the same output directory resumes to the uninterrupted result; a UserError on node 1 is
what node 0's log says; a node sent SIGTERM (preemption) says so; a node left alone stops at the
rendezvous timeout. Whole file: ~1 minute on 2 idle cores.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from rlhf.cluster import ClusterLayout
from rlhf.errors import UserError

SAME_JOB = 1e-6  # a 2-node job against the 1-node 2-process run (see the module docstring)
NODE_TIMEOUT = 150  # seconds a node may run before the test calls it a hang


# -- the layout ----------------------------------------------------------------------------------


def _spec(task_type: str, index: int, workers=("10.0.0.3:2222",), primary=("10.0.0.2:2222",)) -> dict:
    """CLUSTER_SPEC as Vertex AI sets it on a custom job's replica (plus its "environment", "task.trial"
    and "job" fields, which are not ours to read)."""
    return {"CLUSTER_SPEC": json.dumps({
        "cluster": {"workerpool0": list(primary), **({"workerpool1": list(workers)} if workers else {})},
        "environment": "cloud", "task": {"type": task_type, "index": index, "trial": ""},
        "job": {"worker_pool_specs": [{"replica_count": 1}, {"replica_count": len(workers)}]}})}


def _pet(nnodes="2", rank="1", addr="trainjob-node-0-0.trainjob", port="29400", nproc="4") -> dict:
    env = {"PET_NNODES": nnodes, "PET_NODE_RANK": rank, "PET_MASTER_ADDR": addr, "PET_MASTER_PORT": port,
           "PET_NPROC_PER_NODE": nproc}
    return {k: v for k, v in env.items() if v is not None}


def test_nothing_set_is_one_machine():
    assert ClusterLayout.from_environment({}) == ClusterLayout()
    assert not ClusterLayout().multi_node


def test_vertex_pool_0_is_node_0_and_pool_1_replica_i_is_node_1_plus_i():
    workers = ("10.0.0.3:2222", "10.0.0.4:2222", "10.0.0.5:2222")
    primary = ClusterLayout.from_environment(_spec("workerpool0", 0, workers))
    assert (primary.nnodes, primary.node_rank, primary.master_addr, primary.master_port) == (4, 0, "10.0.0.2", 2222)
    assert primary.nproc_per_node is None and primary.source == "CLUSTER_SPEC"
    for i in range(3):
        layout = ClusterLayout.from_environment(_spec("workerpool1", i, workers))
        assert (layout.nnodes, layout.node_rank, layout.rendezvous_endpoint) == (4, 1 + i, "10.0.0.2:2222")
    # One replica (a plain custom job, or a pipeline task's CLUSTER_SPEC): one machine.
    assert not ClusterLayout.from_environment(_spec("workerpool0", 0, workers=())).multi_node


def test_kubeflow_trainer_pet_variables():
    layout = ClusterLayout.from_environment(_pet())
    assert layout == ClusterLayout(2, 1, 4, "trainjob-node-0-0.trainjob", 29400, "PET_*")
    assert layout.describe() == "2 nodes x 4 processes = world size 8"
    assert ClusterLayout.from_environment(_pet(nproc="auto")).nproc_per_node is None  # every local GPU
    assert ClusterLayout.from_environment(_pet(nnodes="3:3", rank="2")).nnodes == 3
    assert ClusterLayout.from_environment(_pet(port=None)).master_port == 29500  # torchrun's default
    assert ClusterLayout.from_environment({"PET_NPROC_PER_NODE": "2"}) == ClusterLayout(nproc_per_node=2,
                                                                                         source="PET_*")
    ipv6 = ClusterLayout.from_environment(_pet(addr="[fd00::1]"))
    assert ipv6.master_addr == "fd00::1" and ipv6.rendezvous_endpoint == "[fd00::1]:29400"


@pytest.mark.parametrize("env, message", [
    ({"CLUSTER_SPEC": "{cluster: 1"}, r"^CLUSTER_SPEC is not JSON \(.*Vertex AI sets it as"),
    ({"CLUSTER_SPEC": "[]"}, r"^CLUSTER_SPEC is a JSON list, not an object"),
    ({"CLUSTER_SPEC": '{"cluster": {}}'}, r'^CLUSTER_SPEC has no "cluster" and "task" objects'),
    (_spec("workerpool1", 1), r'^CLUSTER_SPEC "task.index" is 1: workerpool1 has 1 replica\(s\)'),
    (_spec("workerpool1", "0"), r"^CLUSTER_SPEC \"task.index\" is '0'"),
    (_spec("workerpool2", 0), r"^CLUSTER_SPEC \"task.type\" is 'workerpool2': training runs in workerpool0 "
                              r"and workerpool1 only"),
    (_spec("chief", 0), r"^CLUSTER_SPEC \"task.type\" is 'chief'"),
    (_spec("workerpool0", 0, primary=("a:1", "b:1")), r'"cluster.workerpool0" has 2 replicas'),
    (_spec("workerpool0", 0, workers=("10.0.0.3",)), r"\"cluster.workerpool1\[0\]\" is '10.0.0.3', not 'host:port'"),
    (_spec("workerpool0", 0, primary=("a:99999",)), r"port from 1 to 65535"),
    (_pet(rank="2"), r"^PET_NODE_RANK='2': expected a number from 0 to 1$"),
    (_pet(rank=None), r"^PET_NODE_RANK is not set, but PET_NNODES, PET_MASTER_ADDR"),
    (_pet(nnodes="two"), r"^PET_NNODES='two': expected a whole number$"),
    (_pet(nnodes="1:4"), r"^PET_NNODES='1:4': an elastic range"),
    (_pet(nnodes="0"), r"^PET_NNODES='0': expected a number 1 or more$"),
    (_pet(addr=None), r"^PET_MASTER_ADDR is not set, but PET_NNODES=2"),
    (_pet(port="http"), r"^PET_MASTER_PORT='http': expected a whole number$"),
    (_pet(nproc="0"), r"^PET_NPROC_PER_NODE='0': expected a positive number"),
    (_pet(nproc="cpu"), r"^PET_NPROC_PER_NODE='cpu'"),
])
def test_a_malformed_value_is_a_user_error_naming_the_variable(env, message):
    with pytest.raises(UserError, match=message):
        ClusterLayout.from_environment(env)


def test_the_launcher_reads_the_layout_and_devices_win_over_pet(monkeypatch):
    from rlhf import launch
    from rlhf.ppo.config import PPOConfig
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "CLUSTER_SPEC", *_pet()):
        monkeypatch.delenv(name, raising=False)
    for name, value in _pet(nproc="3", rank="1").items():
        monkeypatch.setenv(name, value)
    assert launch.node_layout(PPOConfig(device="cpu")).nproc_per_node == 3
    assert launch.node_layout(PPOConfig(device="cpu", devices=2)).nproc_per_node == 2
    assert not launch.reports()  # node 1's command prints nothing: global rank 0 is on node 0
    # A scheduler's WORLD_SIZE/RANK beside a layout (a PyTorchJob sets both) is not an outer torchrun...
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "1")
    assert not launch.inside_launched_worker()
    # ...a launched worker is (LOCAL_RANK), and so is one process per pod with no layout.
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert launch.inside_launched_worker() and not launch.reports()
    monkeypatch.delenv("LOCAL_RANK")
    for name in _pet():
        monkeypatch.delenv(name)
    assert launch.inside_launched_worker()
    monkeypatch.setenv("PET_NPROC_PER_NODE", "x")
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(UserError, match="^PET_NPROC_PER_NODE='x'"):
        launch.run(print, PPOConfig(device="cpu"))


def test_a_lost_peer_is_one_line_naming_the_first_failure():
    from rlhf import launch
    layout = ClusterLayout(2, 0, 1, "127.0.0.1", 1234, "CLUSTER_SPEC")
    peer = {"rank": 0, "local_rank": 0, "node": 0, "kind": "peer", "type": "RuntimeError",
            "message": launch._short("[/x/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
                                     "[127.0.0.1]:9120. This is typically caused by a remote worker crashing.")}
    error = launch._first_failure([peer], layout)
    assert isinstance(error, launch.JobFailed) and "\n" not in str(error)
    assert str(error).startswith("process 0 on node 0 of 2 lost contact with the rest of the job "
                                 "(Connection closed by peer [127.0.0.1]:9120); another process or node failed")
    cause = {"rank": 1, "node": 1, "type": "NonFiniteError", "message": "step 3: loss/total is not finite"}
    assert "process 1 (node 1) had stopped: NonFiniteError: step 3: loss/total" in str(
        launch._first_failure([{**peer, "cause": cause}], layout))
    # A process of this node that died without a word (the out-of-memory killer) is named instead.
    died = launch._first_failure([peer], layout, {0: "exit code 1", 1: "killed by SIGKILL"})
    assert str(died).startswith("process 1 on node 0 of 2 died (killed by SIGKILL) without an error of its own")
    # A crash keeps its traceback (None: the launcher's own error is raised).
    assert launch._first_failure([peer, {**peer, "rank": 1, "kind": "error"}], layout) is None


# -- two nodes on localhost ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _vertex(node: int, port: int, port2: int) -> dict:
    """Vertex AI's CLUSTER_SPEC for replica `node` of a job of pool 0 (1 replica) and pool 1 (1)."""
    task = {"type": "workerpool0", "index": 0} if node == 0 else {"type": "workerpool1", "index": node - 1}
    return {"CLUSTER_SPEC": json.dumps({"cluster": {"workerpool0": [f"127.0.0.1:{port}"],
                                                    "workerpool1": [f"127.0.0.1:{port2}"]},
                                        "environment": "cloud", "task": {**task, "trial": ""}, "job": {}})}


def _kubeflow(node: int, port: int, _port2: int) -> dict:
    """Kubeflow Trainer's variables for node `node` of a 2-node, 1-process-per-node TrainJob."""
    return {"PET_NNODES": "2", "PET_NODE_RANK": str(node), "PET_MASTER_ADDR": "127.0.0.1",
            "PET_MASTER_PORT": str(port), "PET_NPROC_PER_NODE": "1"}


class Node(subprocess.Popen):
    """One node's command; its output goes to files (nobody reads pipes while a test waits)."""

    def __init__(self, argv: list[str], env: dict):
        self.out, self.err = (tempfile.TemporaryFile("w+") for _ in range(2))
        super().__init__(argv, env=env, stdout=self.out, stderr=self.err, text=True, start_new_session=True)

    def kill_all(self) -> None:
        """The node's command and the workers it started (a preempted VM)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)

    def outputs(self) -> tuple[int, str, str]:
        self.out.seek(0)
        self.err.seek(0)
        return self.returncode, self.out.read(), self.err.read()


def _start_nodes(argv: list[str], scheduler, nodes=(0, 1), **env) -> list[Node]:
    port, port2 = _free_port(), _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RLHF_DEVICE": "cpu", "TOKENIZERS_PARALLELISM": "false",
           "RLHF_RENDEZVOUS_TIMEOUT_S": "60", **env}
    return [Node(argv, {**env, **scheduler(node, port, port2)}) for node in nodes]


def _finish(nodes: list[Node], timeout: float = NODE_TIMEOUT) -> list[tuple[int, str, str]]:
    """(returncode, stdout, stderr) of each node; a node still running after `timeout` is killed
    (with its workers) and the test fails as a hang."""
    deadline = time.monotonic() + timeout
    for node in nodes:
        try:
            node.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            for n in nodes:
                n.kill_all()
                n.wait()
            pytest.fail(f"a node hung for {timeout} s:\n" + "\n".join(n.outputs()[2][-2000:] for n in nodes))
    return [node.outputs() for node in nodes]


def _two_nodes(args: list[str], scheduler) -> list[tuple[int, str, str]]:
    for attempt in range(3):  # the master port is free when chosen, but another process may take it first
        results = _finish(_start_nodes([sys.executable, "-m", "rlhf", *args], scheduler))
        if not any("EADDRINUSE" in err or "address already in use" in err.lower() for _, _, err in results):
            break
    for rc, _, err in results:
        assert rc == 0, err[-4000:]
    return results


def _without_devices(args: list[str]) -> list[str]:
    """The arguments minus `--devices N`: processes per node come from the scheduler (or the GPUs)."""
    i = args.index("--devices")
    return args[:i] + args[i + 2:]


def _only_node_0_reports(results) -> None:
    (_, out0, err0), (_, out1, err1) = results
    assert out0.count('"output_dir"') == 1 and not out1.strip()  # global rank 0 prints the result, once
    assert "2 nodes x 1 process = world size 2; this is node 0" in err0
    assert "this is node 1" in err1


# The trainers' test helpers (they import transformers) are imported by the tests that run them, so
# the layout tests and the launcher's own subprocesses (which import this module) start fast.


@pytest.fixture(scope="module")
def reward_inputs(tmp_path_factory):
    from test_reward_helpers import build_tiny_model, synthetic_rows, write_jsonl
    root = tmp_path_factory.mktemp("mn-reward")
    return build_tiny_model(root / "tiny", hidden=32), write_jsonl(root / "pref.jsonl", synthetic_rows(72, seed=5))


@pytest.fixture(scope="module")
def ppo_setup(tmp_path_factory):
    from test_ppo_train import build_tiny_setup
    return build_tiny_setup(tmp_path_factory.mktemp("mn-ppo"))


def test_reward_training_on_two_nodes_is_the_one_node_job(reward_inputs, tmp_path):
    from test_multiprocess import close, history, no_strays, reward_args, reward_weights, run_rlhf, weights_close
    reference, vertex, kubeflow = tmp_path / "one-node", tmp_path / "vertex", tmp_path / "kubeflow"
    run_rlhf(reward_args(reward_inputs, reference, 2))
    _only_node_0_reports(_two_nodes(reward_args(reward_inputs, vertex, 1), _vertex))
    _only_node_0_reports(_two_nodes(_without_devices(reward_args(reward_inputs, kubeflow, 1)), _kubeflow))

    for out in (vertex, kubeflow):
        # Written once, by global rank 0: one metrics line per step, one checkpoint series, no strays.
        assert [r["step"] for r in history(out / "metrics.jsonl")] == list(range(1, 7))
        assert sorted(os.listdir(out / "checkpoints")) == ["step-00000004", "step-00000006"]
        assert sorted(os.listdir(out)) == sorted(os.listdir(reference))
        no_strays(out)
        close(history(reference / "metrics.jsonl"), history(out / "metrics.jsonl"), atol=SAME_JOB)
        weights_close(reward_weights(reference), reward_weights(out), atol=SAME_JOB)
        info, ref = (json.loads((d / "reward_model.json").read_text()) for d in (out, reference))
        assert info["normalization"] == pytest.approx(ref["normalization"], abs=SAME_JOB)


def test_ppo_on_two_nodes_is_the_one_node_job_and_a_killed_node_stops_it_and_resumes(ppo_setup, tmp_path):
    from test_multiprocess import close, no_strays, ppo_state, run_rlhf, tune_args, weights_close
    reference, vertex, killed = tmp_path / "one-node", tmp_path / "vertex", tmp_path / "killed"
    run_rlhf(tune_args(ppo_setup, reference, 2))
    _only_node_0_reports(_two_nodes(tune_args(ppo_setup, vertex, 1), _vertex))
    w_ref, m_ref = ppo_state(reference)
    w, m = ppo_state(vertex)
    assert [r["step"] for r in m] == [1, 2, 3]
    assert sorted(os.listdir(vertex / "samples")) == sorted(os.listdir(reference / "samples"))
    no_strays(vertex)
    close(m_ref, m, atol=SAME_JOB)
    weights_close(w_ref, w, atol=SAME_JOB)

    # Kubeflow's variables; node 1 is killed (workers and all, as a preempted VM) once step 1 is saved.
    args = _without_devices(tune_args(ppo_setup, killed, 1))
    node0, node1 = _start_nodes([sys.executable, "-m", "rlhf", *args], _kubeflow)
    marker = killed / "checkpoints" / "step-00000001" / "state.json"
    deadline = time.monotonic() + NODE_TIMEOUT
    while not marker.exists() and node1.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    node1.kill_all()
    assert marker.exists(), node0.outputs()[2][-3000:]
    start = time.monotonic()
    (rc, out, err), _ = _finish([node0, node1], timeout=60)
    assert rc != 0 and not out.strip() and time.monotonic() - start < 60
    last = _error_line(err)
    assert last.startswith("error: process 0 on node 0 of 2 lost contact with the rest of the job ("), err[-3000:]
    assert last.endswith("restart the job with the same --output-dir: a training step resumes from its last "
                         "checkpoint")
    assert "Traceback" not in err, err[-3000:]  # one line, not a wall of tracebacks
    assert not (killed / "policy_adapter").exists()

    # The job restarted on the same output directory resumes, to the uninterrupted result.
    _only_node_0_reports(_two_nodes(args, _kubeflow))
    w_resumed, m_resumed = ppo_state(killed)
    close(m, m_resumed, atol=SAME_JOB)
    weights_close(w, w_resumed, atol=SAME_JOB)
    no_strays(killed)


def _error_line(stderr: str) -> str:
    """The command's one error line (Python's resource tracker may warn after it, as the command exits)."""
    lines = [x for x in stderr.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def _fail_on_node_1() -> str:
    from rlhf import distributed
    rank, _, _ = distributed.init("cpu")
    distributed.barrier()
    if rank == 1:
        raise UserError("step 3: loss/total is not finite")
    distributed.barrier()  # node 0 waits here until node 1's process is gone
    return "unreachable"


def _barriers_until_stopped() -> str:
    from rlhf import distributed
    distributed.init("cpu")
    distributed.barrier()
    Path(os.environ["TEST_STARTED"], os.environ["RANK"]).touch()  # every process joined the job
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        distributed.barrier()
        time.sleep(0.05)
    return "not stopped"


def _launch_code(step: str) -> str:
    """A node's command that launches `step` (a function of this module) on the scheduler's layout."""
    return ("import sys; sys.path.insert(0, {tests!r}); from rlhf import launch, cluster; import test_multinode as t\n"
            "try:\n    launch.launch_on(cluster.ClusterLayout.from_environment(), t.{step})\n"
            "except launch.UserError as e:\n    print('error:', e, file=sys.stderr); sys.exit(2)\n"
            ).format(tests=str(Path(__file__).parent), step=step)


def test_a_user_error_on_node_1_is_what_node_0_says():
    nodes = _start_nodes([sys.executable, "-c", _launch_code("_fail_on_node_1")], _kubeflow)
    (rc0, _, err0), (rc1, _, err1) = _finish(nodes, timeout=60)
    assert rc1 == 2 and _error_line(err1) == "error: (process 1) step 3: loss/total is not finite"
    assert rc0 == 2, err0
    last = _error_line(err0)
    assert last.startswith("error: process 0 on node 0 of 2 lost contact with the rest of the job"), err0
    assert "process 1 (node 1) had stopped: UserError: step 3: loss/total is not finite" in last
    assert "Traceback" not in err0 + err1


def test_a_node_left_alone_stops_at_the_rendezvous_timeout_with_one_line():
    (node0,) = _start_nodes([sys.executable, "-c", _launch_code("_fail_on_node_1")], _vertex, nodes=(0,),
                            RLHF_RENDEZVOUS_TIMEOUT_S="2")
    rc, _, err = _finish([node0], timeout=60)[0]
    assert rc == 2 and "Traceback" not in err, err
    assert _error_line(err).startswith("error: node 0 of 2 could not meet the others at node 0's 127.0.0.1:")
    assert "1/2 clients joined" in err and "RLHF_RENDEZVOUS_TIMEOUT_S" in err


def test_a_preempted_node_says_so_and_the_other_stops(tmp_path):
    """Vertex AI and Kubernetes stop a node with SIGTERM to its command (PyTorch's launcher then stops
    its workers)."""
    node0, node1 = _start_nodes([sys.executable, "-c", _launch_code("_barriers_until_stopped")], _vertex,
                                TEST_STARTED=str(tmp_path))
    deadline = time.monotonic() + 60
    while len(os.listdir(tmp_path)) < 2 and node0.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    node1.send_signal(signal.SIGTERM)
    (rc0, _, err0), (rc1, _, err1) = _finish([node0, node1], timeout=60)
    assert rc1 == 2 and _error_line(err1) == ("error: node 1 of 2 was stopped by SIGTERM; restart the job with the "
                                              "same --output-dir: a training step resumes from its last checkpoint")
    assert rc0 == 2 and _error_line(err0).startswith("error: process 0 on node 0 of 2 lost contact"), err0
    assert "Traceback" not in err0 + err1
