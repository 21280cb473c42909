"""Numbers with their scale in the terminal and HTML tables (#19)."""

from __future__ import annotations

from memaudit.report import html, terminal
from memaudit.report.numbers import mean_std, sig


def test_sig_keeps_small_values_nonzero_and_ordinary_ones_as_before():
    assert sig(0.00073) == "0.00073"
    assert sig(0.0065) == "0.0065"
    assert sig(-0.00041) == "-0.00041"
    assert sig(4.0114) == "4.01" and sig(0.44) == "0.44" and sig(1.47) == "1.47"
    assert sig(0.0) == "0" and sig(None) == "–" and sig(float("nan")) == "–"
    assert sig(3e-8) == "3.0e-08"
    assert mean_std(0.00073, 0.00041) == "0.00073 ± 0.00041"
    assert mean_std(1.5, 0.003) == "1.50 ± 0.0030"


def test_terminal_table_shows_a_small_self_influence_as_nonzero():
    stats = {"n": 300, "mean": 0.00073, "std": 0.00041, "median": 0.0007}
    assert terminal._ms(stats) == "0.00073 ± 0.00041"
    assert "0.00" not in terminal._ms(stats).replace("0.00073", "").replace("0.00041", "")
    assert terminal._f(0.00073) == "0.00073"


def test_html_cells_show_a_small_self_influence_with_its_digits():
    stats = {"n": 300, "mean": 0.00073, "std": 0.00041, "median": 0.0007}
    cell = html._stats_cell(stats)
    assert "0.00073" in cell and "0.00041" in cell
    assert html._fmt_bleu(0.00005) != "0.000"


def test_html_link_rule_cell_names_the_rule_and_its_evidence():
    cell = html._link_rule({"basis": "mutual", "statistic": 4.123, "threshold": 3.5})
    assert cell == "mutual: pooled z 4.12 &ge; 3.50"
    assert html._link_rule({"basis": "evidence", "statistic": 7.0, "threshold": None}) == (
        "evidence: z 7.00"
    )
    assert html._link_rule({}) == "evidence"  # reports from before #19
