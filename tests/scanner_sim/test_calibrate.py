from scanner_sim.calibrate import TARGETS, calibrate_subject, format_table
from tests.conftest import cli


def test_defaults_land_inside_the_published_ranges():
    results = [calibrate_subject(i, seed=0, n_tr=120) for i in range(3)]
    table = format_table(results)
    for r in results:
        assert all(r.within().values()), table
    for _, _, source in TARGETS.values():
        assert source in table


def test_calibrate_command_prints_targets_and_sources():
    out = cli("scanner_sim.cli", "calibrate", "--subjects", "1", "--n-tr", "100", timeout=200)
    assert "median tSNR in brain" in out.stdout and "Power et al. 2012" in out.stdout
    assert "sub-01" in out.stdout and "OUT OF RANGE" not in out.stdout
