import subprocess
import sys

from fitvision import __version__
from fitvision.cli import main


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    assert capsys.readouterr().out.strip() == f"fitvision {__version__}"


def test_usage_error_exits_2():
    proc = subprocess.run([sys.executable, "-m", "fitvision", "train", "--epochs", "many"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "invalid float value: 'many'" in proc.stderr
