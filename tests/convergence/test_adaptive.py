from memaudit.convergence.adaptive import round_sizes


def test_rounds_take_half_steps_to_twice_the_first_then_grow_by_a_quarter_up_to_the_cap():
    assert round_sizes(16, 1000)[:8] == [16, 24, 32, 48, 64, 80, 100, 125]
    assert round_sizes(16, 1000)[-1] == 1000
    assert round_sizes(16, 64) == [16, 24, 32, 48, 64]
    assert round_sizes(16, 70) == [16, 24, 32, 48, 64, 70]
    assert round_sizes(32, 20) == [20]
    sizes = round_sizes(8, 5000)
    assert sizes[:3] == [8, 12, 16]  # a half step, then doubling reached
    sizes = sizes[2:]
    steps = [b - a for a, b in zip(sizes, sizes[1:-1], strict=False)]
    assert all(s >= 8 and s >= 0.25 * a for s, a in zip(steps, sizes, strict=False))
