"""`bs-roformer web`: the server's API on a loopback port (stems equal to the CLI's, errors shown per file with no
files left behind, the upload limit, confined file names), and one run of the page in headless Chromium."""

import io
import os
import shutil
import socket
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

import uvicorn  # noqa: E402

from bs_roformer import demo  # noqa: E402
from bs_roformer.cli import main  # noqa: E402
from bs_roformer.data.synth import synthesize_track  # noqa: E402
from bs_roformer.web.app import create_app  # noqa: E402
from bs_roformer.web.jobs import JobQueue, safe_name  # noqa: E402


class LoopbackServer:
    """The app served by uvicorn in a thread, on a free port of 127.0.0.1."""

    def __init__(self, workdir: Path, max_upload_bytes: int = 50 * 2**20):
        self.workdir = workdir
        self.app = create_app(JobQueue(workdir), max_upload_bytes)
        listening = socket.socket()
        listening.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{listening.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [listening]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def upload(self, path: Path, name: str | None = None) -> str:
        response = self.client.post("/api/uploads", params={"name": name or path.name}, content=path.read_bytes())
        assert response.status_code == 200, response.text
        return response.json()["upload"]

    def run_job(self, uploads: list[str], **settings) -> dict:
        response = self.client.post("/api/jobs", json={"uploads": uploads, **settings})
        assert response.status_code == 200, response.text
        job_id = response.json()["id"]
        deadline = time.monotonic() + 120
        while (job := self.client.get(f"/api/jobs/{job_id}").json())["state"] in ("queued", "running"):
            assert time.monotonic() < deadline, f"job still {job['state']}"
            time.sleep(0.2)
        return job

    def stop(self):
        self.client.close()
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture
def server(tmp_path):
    running = LoopbackServer(tmp_path / "server")
    yield running
    running.stop()


def synthetic_song(path: Path, seconds: float, seed: int = 5) -> Path:
    mixture = sum(synthesize_track(seed, seconds).values())
    soundfile.write(str(path), (0.8 * mixture / abs(mixture).max()).T, 44100, subtype="FLOAT")
    return path


def test_page_separation_gives_the_stems_of_the_cli(server, tmp_path):
    song = synthetic_song(tmp_path / "song.wav", 3.0)
    job = server.run_job([server.upload(song)], model="demo", instrumental=True, output_format="wav32f")
    assert job["state"] == "done", job
    (result,) = job["files"]
    assert result["state"] == "done" and result["error"] == ""
    assert result["done_seconds"] == pytest.approx(3.0) and result["total_seconds"] == pytest.approx(3.0)
    assert result["speed"] > 0

    assert main(["separate", "--demo", str(song), "-o", str(tmp_path / "cli"), "--instrumental", "-q"]) == 0
    stems = {stem["name"]: stem for stem in result["stems"]}
    assert sorted(stems) == ["instrumental", "vocals"]
    for name, stem in stems.items():
        page_audio, page_rate = soundfile.read(io.BytesIO(server.client.get(stem["audio"]).content), dtype="float32")
        cli_audio, cli_rate = soundfile.read(str(tmp_path / "cli" / "demo" / "song" / f"{name}.wav"), dtype="float32")
        assert page_rate == cli_rate == 44100 and page_audio.shape == cli_audio.shape == (3 * 44100, 2)
        assert np.array_equal(page_audio, cli_audio), name  # the same Separator and settings: the same samples
        picture = server.client.get(stem["spectrogram"])
        assert picture.headers["content-type"] == "image/png" and picture.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert server.client.get(result["mixture_spectrogram"]).content[:4] == b"\x89PNG"

    archive = zipfile.ZipFile(io.BytesIO(server.client.get(job["zip"]).content))
    assert sorted(archive.namelist()) == ["song/instrumental.wav", "song/vocals.wav"]
    assert archive.read("song/vocals.wav") == server.client.get(stems["vocals"]["audio"]).content


def test_separate_file_reports_progress_in_seconds_to_a_callable(tmp_path):
    from bs_roformer.separate import Separator

    calls = []
    Separator.demo(device="cpu").separate_file(synthetic_song(tmp_path / "song.wav", 2.5), tmp_path / "out",
                                               progress=lambda done, total: calls.append((done, total)))
    assert len(calls) > 1 and all(total == pytest.approx(2.5) for _, total in calls)
    done = [done for done, _ in calls]
    assert done == sorted(done) and done[0] > 0 and done[-1] == pytest.approx(2.5)


def test_registry_entries_plug_in_at_the_hook(server, tmp_path, monkeypatch):
    from bs_roformer.web import models

    entry = models.ModelChoice("fake-vocals", "A registry model", ("vocals",), "vocals sdr 9.9 (somewhere)", False)
    monkeypatch.setattr(models, "registry_choices", lambda: [entry])
    monkeypatch.setattr(models, "registry_files", lambda model_id: (demo.CONFIG, demo.WEIGHTS))
    menu = server.client.get("/api/models").json()["models"]
    assert [model["id"] for model in menu] == ["demo", "fake-vocals", "local"]
    assert menu[1] == {"id": "fake-vocals", "label": "A registry model", "stems": ["vocals"],
                       "score": "vocals sdr 9.9 (somewhere)", "cached": False}
    job = server.run_job([server.upload(synthetic_song(tmp_path / "song.wav", 0.5))], model="fake-vocals")
    assert job["state"] == "done" and [stem["name"] for stem in job["files"][0]["stems"]] == ["vocals"]
    monkeypatch.undo()
    unknown = server.client.post("/api/jobs", json={"uploads": [server.upload(tmp_path / "song.wav")],
                                                    "model": "fake-vocals"})
    assert unknown.status_code == 400 and "no published model named 'fake-vocals'" in unknown.json()["detail"]


def test_bad_files_fail_on_the_page_and_leave_nothing(server, tmp_path):
    truncated = tmp_path / "cut.flac"  # valid header, data cut at 7.5 s: fails mid-separation
    clip = demo.CLIP.read_bytes()
    truncated.write_bytes(clip[: len(clip) * 3 // 4])
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("these are words, not sound\n" * 20)
    job = server.run_job([server.upload(truncated), server.upload(not_audio)], model="demo", instrumental=True)

    assert job["state"] == "failed"
    cut, notes = job["files"]
    assert cut["state"] == notes["state"] == "failed"
    assert cut["error"].startswith("cut.flac: corrupt audio data") and cut["done_seconds"] > 0
    assert notes["error"].startswith("notes.wav: not an audio file libsndfile can read")
    assert str(server.workdir) not in cut["error"] + notes["error"]  # the page names files, not server paths
    assert cut["stems"] == notes["stems"] == [] and job["zip"] is None
    job_folder = server.workdir / "jobs" / job["id"]
    assert not list(job_folder.glob("*/output"))  # no stems, no .part files, no pictures
    assert sorted(path.name for path in job_folder.rglob("*") if path.is_file()) == ["cut.flac", "notes.wav"]


def test_a_model_that_does_not_fit_its_config_fails_the_job(server, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(demo.CONFIG.read_text().replace("dim: 64", "dim: 32"))
    upload = server.upload(synthetic_song(tmp_path / "song.wav", 1.0))
    job = server.run_job([upload], model="local", config=str(config), checkpoint=str(demo.WEIGHTS))
    assert job["state"] == "failed"
    assert job["error"].startswith("the model cannot run:") and "dim" in job["error"]
    assert [task["state"] for task in job["files"]] == ["failed"]

    missing = server.client.post("/api/jobs", json={"uploads": [server.upload(tmp_path / "song.wav")],
                                                    "model": "local", "config": str(config),
                                                    "checkpoint": str(tmp_path / "none.ckpt")})
    assert missing.status_code == 400 and "none.ckpt: no such file" in missing.json()["detail"]
    unknown = server.client.post("/api/jobs", json={"uploads": [], "model": "demo"})
    assert unknown.status_code == 400 and unknown.json()["detail"] == "choose at least one audio file"


def test_uploads_over_the_limit_are_refused_while_streaming(tmp_path):
    limited = LoopbackServer(tmp_path / "server", max_upload_bytes=10_000)
    try:
        declared = limited.client.post("/api/uploads", params={"name": "big.wav"}, content=b"\0" * 20_000)
        assert declared.status_code == 413 and "larger than the upload limit" in declared.json()["detail"]

        def undeclared_length():  # chunked: no Content-Length, so only the count while streaming can stop it
            for _ in range(10):
                yield b"\0" * 4096

        streamed = limited.client.post("/api/uploads", params={"name": "big.wav"}, content=undeclared_length())
        assert streamed.status_code == 413
        assert list((limited.workdir / "uploads").iterdir()) == []  # the partial upload is gone

        small = limited.client.post("/api/uploads", params={"name": "small.wav"}, content=b"\0" * 9_000)
        assert small.status_code == 200 and small.json()["bytes"] == 9_000
    finally:
        limited.stop()
    assert not limited.workdir.exists()  # the server's working folder is deleted at shutdown


def test_stopping_the_server_stops_a_running_job_and_deletes_its_folder(tmp_path):
    stopping = LoopbackServer(tmp_path / "server")
    job_id = stopping.client.post("/api/jobs", json={"uploads": [stopping.upload(demo.CLIP)]}).json()["id"]
    deadline = time.monotonic() + 60
    while stopping.client.get(f"/api/jobs/{job_id}").json()["files"][0]["done_seconds"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    stopping.stop()
    assert not stopping.thread.is_alive() and not stopping.app.state.jobs.worker.is_alive()
    assert not stopping.workdir.exists()


def test_file_names_and_paths_stay_inside_the_working_folder(server, tmp_path):
    assert safe_name("../../etc/passwd") == "passwd"
    assert safe_name("..\\..\\song.wav") == "song.wav"
    assert safe_name(".hidden") == "hidden"
    assert safe_name("..") == "upload"
    assert safe_name("my song (live) é.flac") == "my song _live_ é.flac"
    upload = server.upload(synthetic_song(tmp_path / "song.wav", 0.5), name="../../../evil.wav")
    assert [path.name for path in (server.workdir / "uploads" / upload).iterdir()] == ["evil.wav"]
    assert not (server.workdir.parent / "evil.wav").exists()

    job = server.client.post("/api/jobs", json={"uploads": [upload], "model": "demo"}).json()
    for sneaky in ("../../uploads", "..%2F..%2F..%2Fetc%2Fpasswd", "0/input/../../../../etc/passwd"):
        assert server.client.get(f"/api/jobs/{job['id']}/files/{sneaky}").status_code == 404
    assert server.client.post("/api/jobs", json={"uploads": ["../x"], "model": "demo"}).status_code == 400


def test_page_and_menu(server):
    page = server.client.get("/")
    assert page.status_code == 200 and 'id="drop-zone"' in page.text
    assert server.client.get("/static/app.js").status_code == 200
    menu = server.client.get("/api/models").json()
    demo_entry = next(model for model in menu["models"] if model["id"] == "demo")
    assert demo_entry["stems"] == ["vocals"] and demo_entry["cached"]
    assert "local" in [model["id"] for model in menu["models"]]
    assert menu["devices"][:2] == ["auto", "cpu"] and "wav32f" in menu["formats"]


# ---- the page in a real browser ------------------------------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or \
    "/usr/bin/chromedriver"


@pytest.mark.browser
@pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                    reason="needs chromium and chromedriver (apt-get install chromium chromium-driver)")
def test_the_page_in_headless_chromium(server, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1200,1000", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    try:
        driver.get(server.url)
        WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
        driver.find_element(By.ID, "file-input").send_keys(str(synthetic_song(tmp_path / "song.wav", 3.0)))
        assert "song.wav" in driver.find_element(By.ID, "chosen-files").text
        driver.find_element(By.ID, "instrumental").click()
        driver.find_element(By.ID, "start").click()

        def stems_ready(d):  # both players have read their audio and every picture has loaded
            players = d.find_elements(By.CSS_SELECTOR, ".stem audio")
            pictures = d.find_elements(By.CSS_SELECTOR, ".results img")
            return (len(players) == 2 and len(pictures) == 3
                    and all(d.execute_script("return arguments[0].readyState >= 1", p) for p in players)
                    and all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i)
                            for i in pictures))

        WebDriverWait(driver, 120).until(stems_ready)
        names = [node.text.split("\n")[0] for node in driver.find_elements(By.CSS_SELECTOR, ".stem .name")]
        assert names == ["vocals", "instrumental"]
        durations = [driver.execute_script("return arguments[0].duration", player)
                     for player in driver.find_elements(By.CSS_SELECTOR, "audio")]
        assert durations == pytest.approx([3.0] * 3, abs=0.01)  # mixture, vocals, instrumental
        assert driver.find_element(By.CSS_SELECTOR, ".job .state").text == "done"
        assert driver.find_element(By.CSS_SELECTOR, "a.zip").get_attribute("href").endswith("/zip")
        screenshot = Path(os.environ.get("BS_ROFORMER_SCREENSHOT", Path(__file__).parent / "artifacts" / "web.png"))
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        driver.set_window_size(1200, driver.execute_script("return document.documentElement.scrollHeight") + 140)
        driver.save_screenshot(str(screenshot))  # the whole page

        not_audio = tmp_path / "notes.txt"  # a second job, with a file that is not audio: its error on the page
        not_audio.write_text("not a song\n" * 10)
        driver.find_element(By.ID, "file-input").send_keys(str(not_audio))
        driver.find_element(By.ID, "start").click()
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".job .file .error"))
        newest = driver.find_elements(By.CSS_SELECTOR, ".job")[0]
        assert newest.find_element(By.CSS_SELECTOR, ".file .error").text.startswith("notes.txt: not an audio file libsndfile can read")
        WebDriverWait(driver, 10).until(lambda d: newest.find_element(By.CSS_SELECTOR, ".state").text == "failed")
    finally:
        driver.quit()
