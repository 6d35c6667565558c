import os
import stat
import subprocess
import sys


def run_runner(tmp_path, *cmd: str) -> tuple[int, str, int]:
    exit_file = tmp_path / "exit_code"
    old = os.umask(0o022)  # a usual umask: files would be 0644 without the runner's care
    try:
        proc = subprocess.run([sys.executable, "-m", "hpcserve_jupyter.targets.local_runner",
                               str(exit_file), "--", *cmd], capture_output=True, text=True)
    finally:
        os.umask(old)
    return proc.returncode, exit_file.read_text(), stat.S_IMODE(exit_file.stat().st_mode)


def test_exit_code_is_recorded_privately(tmp_path):
    code, text, mode = run_runner(tmp_path, sys.executable, "-c", "raise SystemExit(3)")
    assert (code, text, mode) == (3, "3", 0o600)


def test_a_missing_program_is_recorded_as_127(tmp_path):
    code, text, mode = run_runner(tmp_path, str(tmp_path / "no-such-engine"))
    assert (code, text, mode) == (127, "127", 0o600)
    assert not (tmp_path / "exit_code.tmp").exists()
