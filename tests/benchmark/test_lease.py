"""The per-cell lease: exclusive, renewed by a heartbeat, taken over once expired or when its owner's
process is gone, and never owned by two runners at once."""

import subprocess
import sys
import threading
import time

from anomaly_bench.benchmark import lease as lease_module
from anomaly_bench.benchmark.lease import LEASE_DIR, CellLease


def test_one_owner_until_release(tmp_path):
    first, second = CellLease(tmp_path, lease_s=30), CellLease(tmp_path, lease_s=30)
    assert first.try_acquire() and first.held
    assert not second.try_acquire()
    assert second.holder.pid == first.pid and second.holder.token == first.token  # names the owner
    first.release()
    assert not first.held
    assert second.try_acquire()
    second.release()
    assert list((tmp_path / LEASE_DIR).glob("*.json")) == []


def test_an_expired_lease_is_taken_over_and_its_old_owner_learns_it(tmp_path):
    # two "hosts": the pid check only applies on the owner's own host
    old = CellLease(tmp_path, lease_s=0.3, host="node-a")
    new = CellLease(tmp_path, lease_s=30, host="node-b")
    assert old.try_acquire()
    assert not new.try_acquire()  # live: not before expiry
    time.sleep(0.4)
    assert new.try_acquire()
    assert new.generation == old.generation + 1
    assert not old.renew() and old.lost.is_set()  # a newer generation exists
    old.release()  # must not remove the new owner's file
    assert not CellLease(tmp_path, lease_s=30, host="node-c").try_acquire()
    new.release()


def test_the_heartbeat_keeps_a_short_lease_alive(tmp_path):
    # 2 s lease, renewed every 0.67 s: a loaded 2-core CI box (the other xdist worker training, its
    # checkpoints fsync'ing) stalled a 0.3 s lease's 0.1 s beats past expiry once; 1.3 s of slack does not
    owner = CellLease(tmp_path, lease_s=2.0, host="node-a")
    other = CellLease(tmp_path, lease_s=2.0, host="node-b")
    assert owner.try_acquire()
    owner.start_heartbeat()
    deadline = time.time() + 5.0  # two and a half lease lengths: without the beats it would expire
    while time.time() < deadline:
        assert not other.try_acquire()
        time.sleep(0.25)
    assert not owner.lost.is_set()
    owner.release()
    assert other.try_acquire()


def test_a_runner_that_missed_its_renewal_gives_the_lease_up(tmp_path):
    owner = CellLease(tmp_path, lease_s=0.2, host="node-a")
    assert owner.try_acquire()
    time.sleep(0.3)  # suspended past the expiry: someone may already have taken over
    assert not owner.renew() and owner.lost.is_set() and not owner.held


def test_a_dead_owner_on_this_host_does_not_block_until_expiry(tmp_path):
    # lease.py loaded by path: the child skips the benchmark package's heavier imports
    script = ("import importlib.util, os, sys; spec = importlib.util.spec_from_file_location('lease', sys.argv[2]); "
              "mod = sys.modules['lease'] = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod); "
              "lease = mod.CellLease(sys.argv[1], lease_s=600); assert lease.try_acquire(); os._exit(0)")
    subprocess.run([sys.executable, "-c", script, str(tmp_path), lease_module.__file__], check=True, timeout=60)
    (held,) = CellLease(tmp_path).leases()
    assert held.expires_at > time.time() + 500  # far from expired...
    taker = CellLease(tmp_path, lease_s=30)
    assert taker.try_acquire()  # ...but its process is gone
    assert taker.generation == held.generation + 1


def test_racing_runners_never_both_win(tmp_path):
    for round_ in range(15):
        run_dir = tmp_path / f"cell{round_}"
        if round_ % 3 == 1:  # a stale lease to take over
            stale = CellLease(run_dir, lease_s=0.01, host="dead-node")
            assert stale.try_acquire()
            time.sleep(0.02)
        contenders = [CellLease(run_dir, lease_s=30, host=f"node-{i}") for i in range(6)]
        barrier = threading.Barrier(len(contenders))
        won: list[int] = []

        def contend(i: int) -> None:
            barrier.wait()
            if contenders[i].try_acquire():
                won.append(i)

        threads = [threading.Thread(target=contend, args=(i,)) for i in range(len(contenders))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1, (round_, won)
        assert all(c.holder is not None for i, c in enumerate(contenders) if i not in won)


def test_an_unreadable_lease_file_blocks_for_one_lease_only(tmp_path):
    folder = tmp_path / LEASE_DIR
    folder.mkdir()
    (folder / "00000001.json").write_text("{not json")
    lease = CellLease(tmp_path, lease_s=0.3)
    assert not lease.try_acquire()
    assert lease.acquire(wait_s=2.0, poll_s=0.05)
    assert lease.generation == 2


def test_acquire_waits_for_the_holder_and_can_be_cancelled(tmp_path):
    holder = CellLease(tmp_path, lease_s=30)
    assert holder.try_acquire()
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    start = time.monotonic()
    assert not CellLease(tmp_path, lease_s=30).acquire(wait_s=10, poll_s=0.05, cancel=cancel)
    assert time.monotonic() - start < 2
    threading.Timer(0.2, holder.release).start()
    assert CellLease(tmp_path, lease_s=30).acquire(wait_s=10, poll_s=0.05)
