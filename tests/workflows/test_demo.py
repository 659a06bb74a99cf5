"""The demo's run naming and its command line's bad input; the demo itself runs end to end (--quick) in
tests/test_studies.py, in the folder the studies share with it."""
import pytest

from open_clip_simzss.workflows import demo
from open_clip_simzss.cli.demo import main


def test_run_names_hold_every_hyperparameter():
    names = {demo.RunSettings(lam, tau, variant, bank).run_name(0)
             for lam in (0.0, 0.05) for tau in (0.1, 0.4) for variant in ("paper", "release")
             for bank in ("demo", "none")}
    assert len(names) == 16
    assert demo.LIT.run_name(2) == "lam0-tau0.1-paper-bankdemo-seed2"
    assert demo.RunSettings().run_name(0) == "lam0.05-tau0.1-paper-bankdemo-seed0"


@pytest.mark.parametrize("argv, message", [
    (["--study", "nosuch"], "invalid choice"),
    (["--seeds", "0", "0"], "each seed once"),
])
def test_bad_input_is_one_line(tmp_path, capsys, argv, message):
    assert main([*argv, "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not any(tmp_path.iterdir())  # refused before any work
