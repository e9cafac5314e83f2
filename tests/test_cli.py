from cfisac.cli import main
from cfisac.data import open_hdf5


def test_simulate_command_writes_a_verified_file(tmp_path, capsys):
    out = tmp_path / "t.h5"
    assert main(["simulate", "--preset", "tiny", "--n", "5", "--out", str(out), "--seed", "2"]) == 0
    text = capsys.readouterr().out
    assert "range: resolution 19.52 m" in text and "users: mean SINR" in text and "wrote 5 scenes" in text
    assert len(open_hdf5(out)) == 5


def test_bad_cli_input_gives_a_clear_error(tmp_path, capsys):
    assert main(["simulate", "--preset", "nope", "--out", str(tmp_path / "x.h5")]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    assert main(["simulate", "--preset", "tiny", "--n", "0", "--out", str(tmp_path / "x.h5")]) == 2
    assert not (tmp_path / "x.h5").exists()
