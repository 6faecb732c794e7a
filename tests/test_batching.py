"""Per-task batch streams: every example once per pass, reproducible, and resumable mid-pass."""

from mtl.data.batching import TaskBatchSampler


def take(sampler: TaskBatchSampler, k: int) -> list[list[int]]:
    it = iter(sampler)
    return [next(it) for _ in range(k)]


def test_each_pass_covers_every_example_once() -> None:
    s = TaskBatchSampler(10, 3, seed=1)
    first_pass = take(s, 4)
    assert sorted(i for b in first_pass for i in b) == list(range(10))
    assert s.batches_per_pass() == 4


def test_resume_continues_identically() -> None:
    a = TaskBatchSampler(23, 4, seed=5, lengths=list(range(23)), group_by_length=True)
    head = take(a, 9)
    state = a.state_dict()
    tail = take(a, 7)
    b = TaskBatchSampler(23, 4, seed=5, lengths=list(range(23)), group_by_length=True)
    b.load_state_dict(state)
    assert take(b, 7) == tail
    assert head != tail


def test_ranks_get_disjoint_shards() -> None:
    r0 = take(TaskBatchSampler(20, 5, seed=0, rank=0, world_size=2), 2)
    r1 = take(TaskBatchSampler(20, 5, seed=0, rank=1, world_size=2), 2)
    i0, i1 = {i for b in r0 for i in b}, {i for b in r1 for i in b}
    assert not i0 & i1 and len(i0 | i1) == 20
