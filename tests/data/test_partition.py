import numpy as np

from memaudit.config import EnsembleConfig
from memaudit.data.partition import inclusion_column, inclusion_matrix, model_seed


def test_bernoulli_is_about_half_and_seeded():
    p = inclusion_matrix(2000, EnsembleConfig(models=64, seed=3))
    assert p.shape == (2000, 64) and p.dtype == bool
    assert abs(p.mean() - 0.5) < 0.01
    assert np.array_equal(p, inclusion_matrix(2000, EnsembleConfig(models=64, seed=3)))
    assert not np.array_equal(p, inclusion_matrix(2000, EnsembleConfig(models=64, seed=4)))
    # Columns are independent draws, not copies.
    assert len({col.tobytes() for col in p.T}) == 64


def test_growing_m_keeps_earlier_columns():
    small = inclusion_matrix(100, EnsembleConfig(models=8, seed=1))
    large = inclusion_matrix(100, EnsembleConfig(models=32, seed=1))
    assert np.array_equal(small, large[:, :8])
    assert np.array_equal(large[:, 5], inclusion_column(100, 5, "bernoulli", 1))


def test_complementary_pairs():
    p = inclusion_matrix(500, EnsembleConfig(models=16, design="complementary", seed=0))
    assert np.array_equal(p[:, 1::2], ~p[:, 0::2])
    assert (p.sum(axis=1) == 8).all()  # every record in exactly half of the models


def test_model_seeds_differ_and_are_stable():
    seeds = [model_seed(0, j) for j in range(100)]
    assert len(set(seeds)) == 100
    assert seeds == [model_seed(0, j) for j in range(100)]
    assert model_seed(1, 0) != seeds[0]
