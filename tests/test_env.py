import os
import subprocess
import sys


def test_ultralytics_import_stays_offline_and_out_of_home(tmp_path):
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("YOLO_", "DLGPR_"))}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    code = "import dlgpr, os, ultralytics; print(os.environ['YOLO_OFFLINE'], os.environ['YOLO_AUTOINSTALL'], os.environ['YOLO_CONFIG_DIR'])"
    out = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    offline, autoinstall, config_dir = out.stdout.splitlines()[-1].split()
    assert offline == "1" and autoinstall == "0"
    assert config_dir == str(work / ".cache" / "ultralytics")
    assert list(home.rglob("*")) == []  # nothing written into the home folder
    assert (work / ".cache" / "ultralytics").is_dir()  # its settings went to the project-local folder


def test_user_settings_win(tmp_path):
    env = {**os.environ, "YOLO_CONFIG_DIR": str(tmp_path / "mine")}
    code = "import dlgpr, os; print(os.environ['YOLO_CONFIG_DIR'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == str(tmp_path / "mine")
