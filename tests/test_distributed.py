"""Tests for course_lib.distributed: real 2-process gloo jobs on the CPU.

Process start-up dominates, so one launch serves several checks where the
checks belong together (module-scoped fixtures). Worker functions live in
tests/distributed_workers.py, course_lib.distributed.demos and
course_lib.distributed.training: the worker processes import them by name.
"""
from __future__ import annotations

import math
import os
import sys
import tempfile
import textwrap
import types

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

sys.path.insert(0, os.path.dirname(__file__))   # distributed_workers, for this process too

import distributed_workers as workers  # noqa: E402

from course_lib.distributed import (LaunchTimeoutError, NotImportableError, RankDiedError,  # noqa: E402
                                    RankRaisedError, WorkerInfo, accumulation_context,
                                    backend_for, distributed_process, free_port, is_sync_step,
                                    launch, launch_script, target_name)
from course_lib.distributed import launcher as launch_module  # noqa: E402
from course_lib.distributed.__main__ import main  # noqa: E402
from course_lib.distributed.demos import (count_exit_crashes, fsdp_mixed_precision_job,  # noqa: E402
                                          hook_comparison_job, small_ddp_job)
from course_lib.distributed.fsdp import shard_mixed_precision  # noqa: E402
from course_lib.distributed.hooks import wire_bytes  # noqa: E402
from course_lib.distributed.training import (GlobalOrderSampler, loss_weights,  # noqa: E402
                                             sync_schedule, sync_variants_job, train_ddp,
                                             uneven_inputs_job)
from course_lib.train import train  # noqa: E402

WORLD = 2

# One xdist worker runs this module (--dist loadgroup): the module-scoped
# launches and the warm forkserver are shared by all its tests.
pytestmark = pytest.mark.xdist_group("distributed")


def _exists(pid: int) -> bool:
    try:
        import psutil
    except ImportError:
        return os.path.exists(f"/proc/{pid}")
    return psutil.pid_exists(pid)


def assert_all_gone(pids):
    """No worker of the job may outlive the launch (reaped: the pid no longer exists)."""
    assert len(pids) == WORLD
    alive = [pid for pid in pids if _exists(pid)]
    assert not alive, f"orphan worker processes: {alive}"


# ---------------------------------------------------------------- launch: success

@pytest.fixture(scope="module")
def whoami():
    """One launch; also warms the forkserver for the tests that follow."""
    return launch(workers.whoami, WORLD, args=(2.0,), device="cpu")


@pytest.fixture
def launch_folders(tmp_path, monkeypatch):
    """Make launch() create its result folder under tmp_path, to check it is removed."""
    real = tempfile.mkdtemp
    monkeypatch.setattr(launch_module.tempfile, "mkdtemp",
                        lambda prefix: real(prefix=prefix, dir=tmp_path))
    return tmp_path


def test_launch_returns_each_rank_result_in_rank_order(whoami):
    results = whoami
    assert [r["rank"] for r in results] == [0, 1]
    for rank, r in enumerate(results):
        assert r["world"] == WORLD
        assert r["info"] == WorkerInfo(rank, rank, WORLD, torch.device("cpu"), "gloo")
        assert r["env"] == {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                            "MASTER_ADDR": "127.0.0.1"}
        assert torch.equal(r["sum"], torch.tensor([6.0]))      # (1 + 2) * 2.0, via all_reduce
        assert r["sum"].device.type == "cpu"
        assert r["threads"] == 1
    assert_all_gone([r["pid"] for r in results])


def test_string_target_and_command_line(whoami, capsys, launch_folders, monkeypatch):
    # set after the forkserver started (whoami): the workers must still see it
    monkeypatch.setenv("COURSE_TEST_MARKER", "seen")
    assert main(["--nprocs", "2", "--device", "cpu", "distributed_workers:rank_and_argument",
                 "7"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "[rank 0] hello from rank 0", "[rank 1] hello from rank 1",      # the workers' prints
        "rank 0: '0:7:seen'", "rank 1: '1:7:seen'"]
    assert not list(launch_folders.iterdir())                   # result files cleaned up
    assert main(["--device", "cpu", "no_such_module_xyz:fn"]) == 1
    assert "does not import" in capsys.readouterr().err


def test_backend_and_port():
    assert backend_for("cpu") == backend_for(torch.device("cpu")) == "gloo"
    if dist.is_nccl_available():
        assert backend_for("cuda:0") == "nccl"
    else:
        with pytest.raises(RuntimeError, match="NCCL"):
            backend_for("cuda")
    with pytest.raises(ValueError, match="allowed"):
        backend_for("mps")
    with pytest.raises(TypeError):
        backend_for(3)
    port = free_port()
    import socket
    with socket.socket() as s:                                  # it really is free
        s.bind(("127.0.0.1", port))


# ------------------------------------------------------- launch: refused up front

def test_notebook_functions_are_refused_with_the_fix_in_the_message():
    notebook = types.ModuleType("__main__")                     # what a notebook cell makes
    exec("def train():\n    return 1\n", notebook.__dict__)
    assert notebook.train.__module__ == "__main__"
    with pytest.raises(NotImportableError, match=r"\.py file") as info:
        launch(notebook.train, WORLD)
    assert "10511" in str(info.value)

    def nested():
        return 1
    with pytest.raises(NotImportableError, match="module level"):
        target_name(nested)
    with pytest.raises(NotImportableError, match="module level"):
        target_name(lambda: 1)
    with pytest.raises(NotImportableError, match="package.module:function"):
        target_name("distributed_workers.whoami")
    with pytest.raises(NotImportableError, match="has no attribute"):
        target_name("distributed_workers:nope")
    with pytest.raises(NotImportableError, match="not a callable"):
        target_name("distributed_workers:_KEPT")
    assert target_name(workers.whoami) == "distributed_workers:whoami"


def test_bad_arguments_fail_before_any_process_starts():
    with pytest.raises(TypeError, match="pickled"):
        launch(workers.whoami, WORLD, args=(lambda: 0,))
    with pytest.raises(ValueError, match="start_method"):
        launch(workers.whoami, WORLD, start_method="fork")
    with pytest.raises(ValueError, match="nprocs"):
        launch(workers.whoami, 0)
    with pytest.raises(ValueError, match="device"):
        launch(workers.whoami, WORLD, device="tpu")


# ------------------------------------------------------------- launch: failures

def test_a_rank_that_raises_is_named_with_its_traceback(whoami, launch_folders):
    with pytest.raises(RankRaisedError) as info:
        launch(workers.raise_on_rank, WORLD, args=(1,), device="cpu")
    assert not list(launch_folders.iterdir())
    err = info.value
    assert err.rank == 1
    assert str(err).startswith("rank 1 (pid ")
    assert "ValueError: boom from the test on rank 1" in str(err).splitlines()[0]
    assert "in raise_on_rank" in err.remote_traceback          # the remote frame itself
    assert_all_gone(err.pids)


@pytest.mark.parametrize("how, exitcode, signal_name", [("exit", 3, None),
                                                         ("sigkill", -9, "SIGKILL"),
                                                         ("segfault", -11, "SIGSEGV")])
def test_a_rank_that_dies_is_named_with_its_exit_code_or_signal(whoami, how, exitcode, signal_name):
    with pytest.raises(RankDiedError) as info:
        launch(workers.die_on_rank, WORLD, args=(1, how), device="cpu")
    err = info.value
    assert (err.rank, err.exitcode, err.signal_name) == (1, exitcode, signal_name)
    assert "rank 1" in str(err) and (signal_name or "code 3") in str(err)
    if how == "segfault":   # faulthandler wrote the Python stack of the crash to the rank's output
        assert "Segmentation fault" in err.outputs[1] and "in die_on_rank" in str(err)
    assert_all_gone(err.pids)


def test_a_hang_ends_at_the_timeout_with_each_rank_stack(whoami):
    with pytest.raises(LaunchTimeoutError) as info:
        launch(workers.hang_in_all_reduce, WORLD, device="cpu", timeout=2.0)
    err = info.value
    assert isinstance(err, TimeoutError)
    assert err.running == [0, 1]
    assert "hang_in_all_reduce" in err.stacks[0] and "hang_in_all_reduce" in err.stacks[1]
    assert "in all_reduce" in err.stacks[0]                     # rank 0 waits in the collective
    assert "in all_reduce" not in err.stacks[1]                 # rank 1 never got there
    assert_all_gone(err.pids)


def test_an_unpicklable_result_names_the_rank_and_the_fix(whoami):
    with pytest.raises(RankRaisedError, match="cannot be pickled") as info:
        launch(workers.return_unpicklable, WORLD, device="cpu")
    assert_all_gone(info.value.pids)


# ------------------------------------------------------------------ teardown

def test_twenty_consecutive_ddp_launches_with_orderly_teardown(whoami):
    # forkserver (the default): ~0.1 s per launch once warm. Each launch must
    # succeed (a rank that died at exit raises RankDiedError) and leave the
    # next one a clean slate. Interpreter-shutdown aborts need spawn: the slow
    # test below.
    values = [launch(small_ddp_job, WORLD, device="cpu") for _ in range(20)]
    assert all(v == values[0] for v in values)                  # every launch trains the same
    assert values[0][0] == values[0][1]                         # and the ranks agree (DDP)


@pytest.mark.slow
def test_twenty_spawn_launches_with_orderly_teardown_never_abort_at_exit():
    # spawn: every worker runs interpreter finalization, where the naive
    # worker aborts (1/20 with spawn, 3/20 with torchrun measured on torch 2.13);
    # forkserver workers leave through os._exit and cannot show it.
    report = count_exit_crashes(20, teardown=True, start_method="spawn")
    assert report["crashed"] == 0, report


def test_teardown_warns_about_a_model_it_cannot_release(whoami):
    results = launch(workers.teardown_with_live_ddp, WORLD, device="cpu")
    for r in results:
        assert r["live"] == 1 and r["destroyed"] is True and r["initialized_after"] is False
        assert len(r["warnings"]) == 1 and "DistributedDataParallel" in r["warnings"][0]


def test_distributed_process_explains_a_missing_launcher(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        with distributed_process("cpu"):
            pass
    with pytest.raises(ValueError, match="inconsistent"):
        WorkerInfo.from_env({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="integers"):
        WorkerInfo.from_env({"RANK": "x", "WORLD_SIZE": "2"})


# ------------------------------------------------------------ torchrun scripts

SCRIPT = textwrap.dedent("""
    import sys
    import torch, torch.distributed as dist
    from course_lib.distributed import distributed_process
    with distributed_process("cpu") as info:
        total = torch.tensor([info.rank + 1.0])
        dist.all_reduce(total)
        print(f"rank {info.rank} of {info.world_size}: sum {total.item()}", flush=True)
        if sys.argv[1:] == ["raise"] and info.rank == 1:
            raise KeyError("script failure on rank 1")
""")


def _script(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    return script


def test_a_script_under_torchrun_runs_on_every_rank_and_its_failure_names_the_rank(tmp_path):
    # One torchrun job (~3 interpreters importing torch: seconds): both ranks
    # start, all_reduce and print, then rank 1 raises.
    with pytest.raises(RankRaisedError) as info:
        launch_script(_script(tmp_path), WORLD, args=["raise"], device="cpu", timeout=120)
    err = info.value
    assert "rank 0 of 2: sum 3.0" in err.output and "rank 1 of 2: sum 3.0" in err.output
    assert err.rank == 1
    assert "KeyError: 'script failure on rank 1'" in err.remote_traceback
    assert str(err).splitlines()[0].endswith("KeyError: 'script failure on rank 1'")
    with pytest.raises(FileNotFoundError):
        launch_script(tmp_path / "missing.py")


@pytest.mark.slow
def test_a_script_under_torchrun_returns_its_output(tmp_path):
    run = launch_script(_script(tmp_path), WORLD, device="cpu", timeout=120)
    assert "rank 0 of 2: sum 3.0" in run.output and "rank 1 of 2: sum 3.0" in run.output


@pytest.mark.slow
def test_a_hung_script_is_killed_at_the_timeout_with_its_workers(tmp_path):
    script = tmp_path / "hang.py"
    script.write_text(workers.script_that_hangs())
    with pytest.raises(LaunchTimeoutError) as info:
        launch_script(script, WORLD, device="cpu", timeout=40)
    err = info.value
    assert err.running == [0, 1] and "started 0" in err.output and "started 1" in err.output
    assert len(err.pids) >= WORLD and not [pid for pid in err.pids if _exists(pid)]


# ----------------------------------------------------------- accumulation

def test_accumulation_context_on_a_plain_module_is_a_null_context():
    assert [is_sync_step(i, 4) for i in range(8)] == [False, False, False, True] * 2
    assert all(is_sync_step(i, 1) for i in range(3))
    model = nn.Linear(2, 1)
    with accumulation_context(model, 0, 4):
        model(torch.ones(1, 2)).sum().backward()
    assert model.weight.grad is not None
    with pytest.raises(ValueError, match="accumulation_steps"):
        is_sync_step(0, 0)
    with pytest.raises(TypeError, match="model"):
        accumulation_context("model", 0, 2)


# --------------------------------------------------------------- comm hooks

@pytest.fixture(scope="module")
def hooks_report(whoami):
    return launch(hook_comparison_job, WORLD, kwargs={"optimizer_steps": 2,
                                                      "accumulation_steps": 3}, device="cpu")


def test_one_all_reduce_per_optimizer_step_with_no_sync_one_per_micro_step_without(hooks_report):
    for r in hooks_report:
        for name, entry in r["hooks"].items():
            assert entry["calls_per_step_no_sync"] == [1, 1], name          # one bucket, 2 steps
            assert entry["calls_per_step_every_micro_step"] == [3, 3], name


def test_bytes_per_step_by_hook(hooks_report):
    r = hooks_report[0]
    n, w = r["parameters"], r["world_size"]
    assert n == sum(p.numel() for p in __import__("course_lib.models", fromlist=["MLP"])
                    .MLP(in_features=64, hidden=(32,), num_classes=10).parameters())
    fp32, fp16, bf16 = (r["hooks"][k] for k in ("fp32", "fp16", "bf16"))
    assert fp32["collectives"] == {"allreduce_": 1} and fp32["payload_bytes"] == 4 * n
    assert fp16["collectives"] == {"allreduce_": 1} and fp16["payload_bytes"] == 2 * n
    assert fp32["wire_bytes"] == 2 * (w - 1) * 4 * n // w
    chunk = math.ceil(n / w)                                    # bf16: all_to_all + all_gather
    assert bf16["collectives"] == {"alltoall_base_": 1, "allgather_": 1}
    assert bf16["payload_bytes"] == 2 * w * chunk + 2 * chunk
    assert bf16["wire_bytes"] == 4 * (w - 1) * chunk
    assert bf16["wire_bytes"] == fp16["wire_bytes"] == fp32["wire_bytes"] // 2   # n is even


def test_wire_bytes_ring_model():
    assert wire_bytes("c10d.allreduce_.default", 800, 4) == 1200   # 2 (W-1)/W S
    assert wire_bytes("allgather_", 100, 4) == 300                 # (W-1) S
    assert wire_bytes("_reduce_scatter_base_", 400, 4) == 300       # (W-1)/W S
    assert wire_bytes("broadcast_", 100, 4) == 100


def test_hooked_gradients_are_the_average_within_the_rounding_bound(hooks_report):
    for r in hooks_report:
        g = r["local_grads"]                                    # each rank's fp32 gradient
        assert not torch.equal(g[0], g[1])                      # ranks saw different data
        hooks = r["hooks"]
        for name in ("fp32", "fp16", "bf16"):
            assert hooks[name]["within_bound"], (name, hooks[name]["max_error"])
            assert hooks[name]["representable"], name           # payload really in that dtype
        assert hooks["fp16"]["max_error"] > 0 and hooks["bf16"]["max_error"] > 0
        # bit-exact emulations: fp32 hook divides then sums; ours rounds to bf16,
        # divides and sums in fp32, rounds the average to bf16
        assert torch.equal(hooks["fp32"]["grad"], g[0] / 2 + g[1] / 2)
        b = g.to(torch.bfloat16).to(torch.float32)
        assert torch.equal(hooks["bf16"]["grad"],
                           (b[0] / 2 + b[1] / 2).to(torch.bfloat16).to(torch.float32))
        h = g.to(torch.float16) / 2                             # torch: fp16, divide, fp16 sum
        assert torch.equal(hooks["fp16"]["grad"], (h[0] + h[1]).to(torch.float32))
    # both ranks end with the same averaged gradient
    for name in ("fp32", "fp16", "bf16"):
        assert torch.equal(hooks_report[0]["hooks"][name]["grad"],
                           hooks_report[1]["hooks"][name]["grad"])


def test_torch_bf16_hook_on_this_build(hooks_report):
    found = hooks_report[0]["torch_bf16"]
    if torch.version.cuda is None and torch.version.hip is None:
        assert found["register_bf16_compress_hook"].startswith("TypeError: BF16 all reduce")
    assert found["int16_all_reduce"] == "RuntimeError: Invalid scalar type"


# --------------------------------------------------------------------- FSDP2

@pytest.fixture(scope="module")
def fsdp_report(whoami):
    return launch(fsdp_mixed_precision_job, WORLD, device="cpu")


def test_fsdp2_keeps_fp32_masters_and_computes_in_bf16(fsdp_report):
    for r in fsdp_report:
        for case in ("reduce_fp32", "reduce_default"):
            entry = r[case]
            assert set(entry["master_dtypes"].values()) == {torch.float32}, case
            assert set(entry["compute_dtypes"].values()) == {torch.bfloat16}, case
            assert entry["output_dtype"] == torch.bfloat16 and entry["grad_dtype"] == torch.float32


def test_fsdp2_reduce_dtype_decides_the_precision_of_the_gradient_average(fsdp_report):
    for r in fsdp_report:
        fp32, default = r["reduce_fp32"], r["reduce_default"]
        # fp32 reduction: exactly the fp32 average of the ranks' bf16 gradients
        assert torch.equal(fp32["grad"], fp32["oracle_fp32"])
        assert not fp32["representable_bf16"]
        # reduce_dtype=None reduces in bf16: that average rounded to bf16
        oracle = default["oracle_fp32"]
        assert torch.equal(default["grad"], oracle.to(torch.bfloat16).to(torch.float32))
        assert default["representable_bf16"] and not torch.equal(default["grad"], oracle)


def test_casting_to_bf16_before_sharding_makes_bf16_masters_that_lose_small_updates(fsdp_report):
    for r in fsdp_report:
        cast = r["cast_before_sharding"]
        assert set(cast["master_dtypes"].values()) == {torch.bfloat16}
        assert cast["grad_dtype"] == torch.bfloat16
        # lr=1e-5 updates (~1e-7) are far below half a bf16 ulp of the weights
        # (~|w| 2^-8 ~ 1e-3) and far above half an fp32 ulp (~|w| 2^-24 ~ 1e-9):
        # fp32 masters change wherever the gradient is non-zero, bf16 masters almost nowhere.
        assert r["reduce_fp32"]["changed_fraction"] > 0.5
        assert cast["changed_fraction"] < 0.05


def test_shard_mixed_precision_refuses_low_precision_masters():
    with pytest.raises(ValueError, match="master"):
        shard_mixed_precision(nn.Linear(2, 2).to(torch.bfloat16))


# ------------------------------------------------- train_ddp: the DDP training function

# 37 samples (odd), W=2, b=4, K=2: the drop rule keeps 36, 18 per rank = micro-batches
# 4,4,4,4,2 -> groups [4,4], [4,4], [2]: an incomplete last group of one short micro-batch.
EQ = {"n": 37, "micro_batch_size": 4, "accumulation_steps": 2, "epochs": 3, "seed": 3}


def _oracle(n, micro_batch_size, accumulation_steps, epochs, seed, drop_last=True, **kwargs):
    """One process, batch W*K*b, over the order the W ranks' global batches follow."""
    model = workers.small_model(seed)
    data = workers.toy_dataset(n, seed)
    loader = DataLoader(data, batch_size=WORLD * accumulation_steps * micro_batch_size,
                        sampler=GlobalOrderSampler(data, WORLD, seed=seed, drop_last=drop_last))
    grads = []
    result = train(model, loader, epochs=epochs, seed=seed, progress=False, device="cpu",
                   callback=lambda r: grads.append(workers.flat(p.grad for p in model.parameters())),
                   **kwargs)
    return {"grads": grads, "params": workers.flat(model.parameters()), "history": result.history}


@pytest.fixture(scope="module")
def equivalence(whoami):
    kwargs = {"optimizer": "sgd", "lr": 0.5, "optimizer_kwargs": {"momentum": 0.9}}
    ddp = launch(workers.ddp_equivalence_run, WORLD, kwargs={**EQ, **kwargs}, device="cpu")
    return ddp, _oracle(**EQ, **kwargs)


# Tolerance: both sides compute the same mean over the same 16 (or 4) samples in fp32, in a
# different order (per-rank sums, then the all-reduce; or one sum). Summing m terms in another
# order changes the result by at most ~m u sum|terms| (Higham), u = 2**-24; here m <= 16 samples
# x 8 hidden units and |terms| < 1, so <= 128 * 6e-8 ~ 8e-6 per element and step; measured ~1e-8.
# Wrong compositions or a missed sync differ by ~1e-2 (test_sync_rules_on_real_ddp).
TOL = 8e-6


def test_ddp_with_accumulation_equals_one_process_with_the_global_batch(equivalence):
    ddp, oracle = equivalence
    steps = EQ["epochs"] * math.ceil(18 / (EQ["micro_batch_size"] * EQ["accumulation_steps"]))
    assert len(oracle["grads"]) == steps == 9
    for r in ddp:
        assert r["steps"] == steps and len(r["grads"]) == steps
        assert r["global_batch"] == 16 and r["per_epoch"] == 36 and r["dropped"] == 1
        for step, (got, want) in enumerate(zip(r["grads"], oracle["grads"])):
            assert float((got - want).abs().max()) <= TOL, step          # same gradients
        assert float((r["params"] - oracle["params"]).abs().max()) <= TOL  # same weights
        for mine, single in zip(r["history"], oracle["history"]):       # same (global) losses
            assert mine["loss"] == pytest.approx(single["loss"], abs=TOL)
        assert r["divergence"] == 0.0                                    # replicas bitwise equal
    assert not torch.equal(ddp[0]["grads"][0], ddp[0]["grads"][1])       # the steps differ
    assert torch.equal(ddp[0]["params"], ddp[1]["params"])


def test_each_rank_reads_a_disjoint_shard_and_set_epoch_changes_the_order(equivalence):
    ddp, _ = equivalence
    per_rank = 18
    epochs = [[r["seen"][e * per_rank:(e + 1) * per_rank] for e in range(EQ["epochs"])]
              for r in ddp]
    for e in range(EQ["epochs"]):
        a, b = set(epochs[0][e]), set(epochs[1][e])
        assert len(a) == len(b) == per_rank and not a & b               # disjoint shards
        sampler = GlobalOrderSampler(range(EQ["n"]), WORLD, seed=EQ["seed"])
        sampler.set_epoch(e)
        expected = list(sampler)                                        # perm(seed + e)[:36]
        assert epochs[0][e] == expected[0::2] and epochs[1][e] == expected[1::2]
        assert len(a | b) == 36
    assert epochs[0][0] != epochs[0][1] != epochs[0][2]                 # set_epoch: new order
    dropped = [set(range(EQ["n"])) - set(epochs[0][e]) - set(epochs[1][e]) for e in range(3)]
    assert all(len(d) == 1 for d in dropped) and len(set.union(*dropped)) > 1


def test_one_all_reduce_per_optimizer_step_including_the_incomplete_last_group(equivalence):
    ddp, _ = equivalence
    for r in ddp:
        assert r["calls"] == [1] * 9


def test_without_no_sync_every_micro_step_all_reduces_for_the_same_result(equivalence):
    _, oracle = equivalence
    kwargs = {"optimizer": "sgd", "lr": 0.5, "optimizer_kwargs": {"momentum": 0.9}}
    every = launch(workers.ddp_equivalence_run, WORLD, device="cpu",
                   kwargs={**EQ, **kwargs, "no_sync": False})
    for r in every:
        assert r["calls"] == [2, 2, 1] * 3                 # K=2 micro-steps; the last group has 1
        assert float((r["params"] - oracle["params"]).abs().max()) <= TOL
        assert r["divergence"] == 0.0


def test_global_order_sampler_is_the_interleaved_union_of_the_shards():
    for n, world, drop_last in [(37, 2, True), (37, 2, False), (11, 3, True), (11, 3, False),
                                (12, 3, True)]:
        oracle = GlobalOrderSampler(range(n), world, seed=5, drop_last=drop_last)
        shards = [DistributedSampler(range(n), world, r, seed=5, drop_last=drop_last)
                  for r in range(world)]
        for epoch in (0, 1):
            oracle.set_epoch(epoch)
            for s in shards:
                s.set_epoch(epoch)
            order = list(oracle)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(5 + epoch)).tolist()
            if drop_last:
                assert order == perm[:n - n % world] and len(set(order)) == len(order)
            else:
                pad = -n % world                                     # repeats the first samples
                assert order == perm + perm[:pad] and len(order) - len(set(order)) == pad
            assert len(oracle) == len(order)
            k, b = 2, 2                                              # global batch W*K*b
            rank_groups = [list(s) for s in shards]
            for start in range(0, len(rank_groups[0]), k * b):
                union = sorted(i for g in rank_groups for i in g[start:start + k * b])
                batch = order[start * world:(start + k * b) * world]
                assert union == sorted(batch)


@pytest.fixture(scope="module")
def sync_variants(whoami):
    return launch(sync_variants_job, WORLD, kwargs={"accumulation_steps": 4,
                                                    "optimizer_steps": 2}, device="cpu")


def test_sync_rules_on_real_ddp(sync_variants):
    for r in sync_variants:
        right, every = r["no_sync"], r["every_micro_step"]
        assert right["synced_micro_steps"] == [[3], [3]] and right["all_reduces_per_step"] == [1, 1]
        assert every["synced_micro_steps"] == [[0, 1, 2, 3]] * 2
        assert every["all_reduces_per_step"] == [4, 4]
        for entry in (right, every):
            assert entry["grad_error"] <= TOL and entry["replica_divergence"] == 0.0
        # the off-by-one (FunASR PR #3472) and the flag set at backward (build-nanogpt PR #30)
        # both sync the first micro-step and not the last: caught by both checks
        for bug in ("sync_first", "flag_at_backward"):
            assert r[bug]["synced_micro_steps"] == [[0], [0]]
            assert r[bug]["grad_error"] > 1e-3
            assert r[bug]["replica_divergence"] > 1e-3


def test_sync_schedule_marks_the_last_micro_step_of_every_group():
    assert sync_schedule(5, 2) == [False, True, False, True, True]
    assert sync_schedule(4, 2) == [False, True, False, True]
    assert sync_schedule(1, 8) == [True]
    for n in range(1, 12):
        for k in range(1, 5):
            flags = sync_schedule(n, k)
            assert sum(flags) == math.ceil(n / k) and flags[-1]           # one sync per step
            assert flags[:n - n % k] == [is_sync_step(i, k) for i in range(n - n % k)]
    with pytest.raises(ValueError, match="accumulation_steps"):
        sync_schedule(3, 0)


def test_loss_weights_give_the_gradient_of_the_global_mean():
    # oracle: autograd. Each rank back-propagates sum_i w_ri * mean loss_ri; DDP averages
    # the ranks' gradients. That must equal the gradient of the mean over all samples.
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    for sizes in ([[4, 4], [4, 4]], [[4, 4, 2], [4, 4, 2]], [[3], [2]], [[5, 1], [2], [3, 3, 3]],
                  [[7]], [[0, 2], [1]]):
        xs = [[torch.randn(n, 3, generator=gen, dtype=torch.float64) for n in row] for row in sizes]
        weights = loss_weights(sizes)
        ranks = []
        for row, ws in zip(xs, weights):
            loss = sum(wi * (x @ w).square().mean() for x, wi in zip(row, ws) if len(x))
            ranks.append(torch.autograd.grad(loss, w)[0])
        averaged = sum(ranks) / len(ranks)
        everything = torch.cat([x for row in xs for x in row])
        exact = torch.autograd.grad((everything @ w).square().mean(), w)[0]
        assert torch.allclose(averaged, exact, rtol=1e-12, atol=1e-14), sizes
    assert loss_weights([[8, 8, 3], [8, 8, 3]])[0] == [8 / 19, 8 / 19, 3 / 19]   # train's n_i/N
    for bad in ([], [[]], [[0]], "ab", [[1, -1]]):
        with pytest.raises((ValueError, TypeError)):
            loss_weights(bad)


@pytest.fixture(scope="module")
def amp_runs(whoami):
    common = {"n": 40, "micro_batch_size": 4, "accumulation_steps": 2, "epochs": 3, "seed": 1,
              "optimizer": "sgd", "lr": 0.2}
    return {name: launch(workers.ddp_equivalence_run, WORLD, device="cpu",
                         kwargs={**common, **extra})
            for name, extra in {"fp16": {"precision": "amp_fp16", "loss_scale": 2.0 ** 20,
                                         "grad_clip": 0.5},
                                "bf16": {"precision": "amp_bf16"}}.items()}


def test_amp_inside_ddp_skips_and_clips_identically_on_every_rank(amp_runs):
    fp16 = amp_runs["fp16"]
    a, b = (r["history"] for r in fp16)
    # loss scale 2**20 overflows fp16 gradients: the steps are skipped (and the scale
    # halved) -- on both ranks alike, since both unscale the same all-reduced gradients
    assert [h["skipped"] for h in a] == [h["skipped"] for h in b]
    assert [h["scale"] for h in a] == [h["scale"] for h in b]
    assert a[0]["skipped"] and a[0]["scale"] == 2.0 ** 20 and not a[-1]["skipped"]
    # clipping after unscale: the step's gradient norm is at most grad_clip (unscaled units)
    stepped = [(h, g) for h, g in zip(a, fp16[0]["grads"]) if not h["skipped"]]
    assert any(h["grad_norm"] > 0.5 for h, _ in stepped)                # clipping was needed
    for h, g in stepped:
        assert h["grad_norm"] < 1e3                                       # unscaled, not x 2**17
        assert float(g.norm()) <= min(h["grad_norm"], 0.5) * (1 + 1e-5)
    for run in amp_runs.values():
        assert run[0]["divergence"] == run[1]["divergence"] == 0.0
        assert torch.equal(run[0]["params"], run[1]["params"])
    bf16 = amp_runs["bf16"][0]
    assert not any(h["skipped"] for h in bf16["history"])
    assert all(h["scale"] == 1.0 for h in bf16["history"])


def test_join_lets_ranks_with_different_numbers_of_batches_finish(whoami):
    results = launch(uneven_inputs_job, WORLD, args=(True,), device="cpu", timeout=60)
    assert [r["steps_done"] for r in results] == [3, 2]
    assert all(r["replica_divergence"] == 0.0 for r in results)


def test_train_ddp_refuses_what_it_cannot_do():
    data = workers.toy_dataset(8)
    with pytest.raises(RuntimeError, match="launch"):
        train_ddp(workers.small_model(), data, micro_batch_size=2, epochs=1)
    with pytest.raises(ValueError, match="micro_batch_size"):
        train_ddp(workers.small_model(), data, micro_batch_size=0, epochs=1)
    with pytest.raises(ValueError, match="comm_hook"):
        train_ddp(workers.small_model(), data, micro_batch_size=2, epochs=1, comm_hook="int8")
