import numpy as np
import pytest

from components.knowledge.embedder import plan_batches


def _check(lengths: list[int], max_texts: int, max_tokens: int) -> list[slice]:
    arr = np.array(sorted(lengths, reverse=True))
    batches = plan_batches(arr, max_texts, max_tokens)
    covered = [i for b in batches for i in range(len(arr))[b]]
    assert covered == list(range(len(arr)))  # every text once, in order
    for b in batches:
        size = b.stop - b.start
        assert 1 <= size <= max_texts
        if max_tokens and size > 1:
            assert size * arr[b.start] <= max_tokens  # padded size: count x the longest (the first)
    return batches


@pytest.mark.parametrize("seed", range(20))
def test_batches_cover_every_text_within_both_limits(seed: int) -> None:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 300, size=int(rng.integers(1, 500))).tolist()
    _check(lengths, max_texts=int(rng.integers(1, 300)), max_tokens=int(rng.choice([0, 256, 1024, 4096])))


def test_long_texts_go_in_small_batches_and_short_ones_in_large() -> None:
    batches = _check([256] * 40 + [16] * 400, max_texts=256, max_tokens=4096)
    sizes = [b.stop - b.start for b in batches]
    assert sizes[0] == 16  # 4096 // 256
    assert max(sizes) == 256 and sizes.count(256) == 1  # the 400 short texts: one full batch of 256, then the rest


def test_a_text_over_the_budget_goes_alone_and_zero_budget_is_plain_batches() -> None:
    assert [b.stop - b.start for b in _check([9000, 8000, 10], 64, 4096)] == [1, 1, 1]
    assert [b.stop - b.start for b in _check([5] * 70, 32, 0)] == [32, 32, 6]
    assert plan_batches(np.array([], dtype=np.int64), 8, 4096) == []
