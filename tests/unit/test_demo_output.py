"""``nnunetv2_deconver demo --output``: a folder that is not the demo's is refused in one line before anything
is written or deleted, so the advice to re-run is only given where re-running resumes."""
from nnunetv2_deconver.tools import cli
from nnunetv2_deconver.tools.demo import DATASET_NAME, STATE_FILE


def _demo(output, capsys):
    capsys.readouterr()
    code = cli.main(["demo", "--output", str(output), "--device", "cpu", "--epochs", "1", "--iterations", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def _tree(folder):
    return sorted((str(p.relative_to(folder)), p.read_bytes() if p.is_file() else None) for p in folder.rglob("*"))


def test_a_folder_of_user_files_is_refused_and_left_alone(tmp_path, capsys):
    output = tmp_path / "mine"
    (output / "predictions").mkdir(parents=True)
    (output / "predictions" / "case_001.nii.gz").write_bytes(b"a user's prediction")
    (output / "report").mkdir()
    (output / "report" / "summary.md").write_text("a user's report")
    before = _tree(output)
    code, err = _demo(output, capsys)
    assert code == 2 and len(err) == 1 and f"no {STATE_FILE}" in err[0] and "re-run" not in err[0], err
    assert _tree(output) == before


def test_a_second_dataset_with_the_demos_id_is_named(tmp_path, capsys):
    output = tmp_path / "demo"
    (output / "nnUNet_raw" / "Dataset990_Other").mkdir(parents=True)
    (output / "nnUNet_raw" / DATASET_NAME).mkdir()
    (output / STATE_FILE).write_text("{}")
    before = _tree(output)
    code, err = _demo(output, capsys)
    assert code == 2 and len(err) == 1 and "Dataset990_Other" in err[0] and "re-run" not in err[0], err
    assert _tree(output) == before


def test_output_that_is_a_file(tmp_path, capsys):
    output = tmp_path / "demo"
    output.write_text("x")
    code, err = _demo(output, capsys)
    assert code == 2 and len(err) == 1 and "is a file" in err[0], err
