"""Published models by name: downloads through a local HTTP server (no internet), and the shipped registry itself."""

import hashlib
import http.server
import importlib.util
import json
import threading
from pathlib import Path

import pytest
import soundfile
import torch
import yaml

from bs_roformer import pretrained
from bs_roformer.cli import main
from bs_roformer.config import build_model, load_config, stem_names
from bs_roformer.pretrained import download as download_module
from bs_roformer.pretrained import DownloadError, fetch, load_registry, size_problem, state_shapes

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "audio": {"sample_rate": 44100, "chunk_size": 8192},
    "model": dict(dim=16, depth=1, heads=2, dim_head=8, stereo=True, time_transformer_depth=1,
                  freq_transformer_depth=1, stft_n_fft=512, stft_win_length=512, stft_hop_length=128,
                  freqs_per_bands=[2, 2, 4, 4, 8, 8, 16, 16, 32, 32, 64, 69]),
    "training": {"model_type": "bs_roformer", "instruments": ["vocals", "other"], "target_instrument": "vocals"},
    "inference": {"num_overlap": 2, "batch_size": 2},
}


class FileServer(http.server.BaseHTTPRequestHandler):
    """Serves `files` by path with Range support; records every request. `cut` paths send half their bytes on the
    first request and drop the connection; `redirects` answer 302; anything else is 404."""

    files: dict[str, bytes] = {}
    redirects: dict[str, str] = {}
    cut: set[str] = set()
    log: list[tuple[str, str | None]] = []

    def do_GET(self):
        self.log.append((self.path, self.headers.get("Range")))
        if self.path in self.redirects:
            self.send_response(302)
            self.send_header("Location", self.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path not in self.files:
            self.send_error(404)
            return
        data = self.files[self.path]
        start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0]) if self.headers.get("Range") else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if self.path in self.cut:
            self.cut.discard(self.path)
            self.wfile.write(data[start : start + (len(data) - start) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    FileServer.files, FileServer.redirects, FileServer.cut, FileServer.log = {}, {}, set(), []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FileServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", FileServer
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def tiny_model(tmp_path):
    model = build_model(TINY, "bs_roformer")
    torch.save(model.state_dict(), tmp_path / "tiny.ckpt")
    return (tmp_path / "tiny.ckpt").read_bytes(), yaml.safe_dump(TINY).encode()


@pytest.fixture
def user_registry(tmp_path, monkeypatch, server, tiny_model):
    """A user registry with entry `tiny-bs-test` served by the local server; returns a function to add entries."""
    base, handler = server
    weights, config = tiny_model
    handler.files.update({"/tiny.ckpt": weights, "/tiny.yaml": config})
    monkeypatch.setenv("BS_ROFORMER_REGISTRY", str(tmp_path / "registry.json"))
    monkeypatch.setenv("BS_ROFORMER_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BS_ROFORMER_OFFLINE", raising=False)
    monkeypatch.setattr(download_module, "BACKOFF_SECONDS", 0.0)
    entries = []

    def add(model_id="tiny-bs-test", url=f"{base}/tiny.ckpt", sha256=hashlib.sha256(weights).hexdigest(),
            size=len(weights)):
        entries.append(dict(
            id=model_id, name="tiny test model", architecture="bs_roformer", stems=["vocals"], target="vocals",
            config=f"{base}/tiny.yaml", checkpoint=dict(file="tiny.ckpt", urls=[url], sha256=sha256, size=size),
            scores=[], authors=["tests"], home=None, license=None, unsupported=None,
        ))
        (tmp_path / "registry.json").write_text(json.dumps({"format": 1, "models": entries}))
        return model_id

    add()
    return add, handler, weights, tmp_path / "cache"


def test_first_download_then_the_cache_makes_no_request(user_registry):
    _, handler, weights, cache = user_registry
    config, checkpoint = fetch("tiny-bs-test", progress=False)
    assert checkpoint == cache / "tiny-bs-test" / "tiny.ckpt" and checkpoint.read_bytes() == weights
    assert load_config(config)["model"]["dim"] == 16
    assert [path for path, _ in handler.log] == ["/tiny.yaml", "/tiny.ckpt"]
    assert not list(cache.rglob("*.part"))
    assert fetch("tiny-bs-test", progress=False) == (config, checkpoint)
    assert len(handler.log) == 2  # the second run asked the server nothing


def test_a_download_cut_half_way_resumes_with_range(user_registry):
    _, handler, weights, cache = user_registry
    handler.cut.add("/tiny.ckpt")
    _, checkpoint = fetch("tiny-bs-test", progress=False)
    assert checkpoint.read_bytes() == weights
    first, second = [header for path, header in handler.log if path == "/tiny.ckpt"]
    resumed_at = int(second.removeprefix("bytes=").removesuffix("-"))  # the blocks that arrived whole before the cut
    assert first is None and len(weights) // 2 - download_module.BLOCK < resumed_at <= len(weights) // 2


def test_an_interrupted_run_leaves_a_part_file_that_the_next_run_resumes(user_registry, monkeypatch):
    _, handler, weights, cache = user_registry
    monkeypatch.setattr(download_module, "ATTEMPTS", 1)
    handler.cut.add("/tiny.ckpt")
    with pytest.raises(DownloadError, match="resumed by the next try"):
        fetch("tiny-bs-test", progress=False)
    part = cache / "tiny-bs-test" / "tiny.ckpt.part"
    kept = part.stat().st_size
    assert 0 < kept <= len(weights) // 2 and not (cache / "tiny-bs-test" / "tiny.ckpt").exists()
    _, checkpoint = fetch("tiny-bs-test", progress=False)
    assert checkpoint.read_bytes() == weights and not part.exists()
    assert handler.log[-1] == ("/tiny.ckpt", f"bytes={kept}-")


def test_a_wrong_digest_is_an_error_and_the_file_is_removed(user_registry):
    add, _, _, cache = user_registry
    add("tiny-bad-digest", sha256="0" * 64)
    with pytest.raises(DownloadError, match="sha256 of tiny.ckpt .* the registry says 0000"):
        fetch("tiny-bad-digest", progress=False)
    assert not list((cache / "tiny-bad-digest").glob("tiny.ckpt*"))  # neither the file nor a .part


def test_a_cached_file_that_no_longer_matches_is_removed(user_registry):
    _, _, _, cache = user_registry
    _, checkpoint = fetch("tiny-bs-test", progress=False)
    checkpoint.with_name("tiny.ckpt.sha256").unlink()  # as if verified by another registry
    checkpoint.write_bytes(b"corrupted")
    with pytest.raises(DownloadError, match="does not have the sha256"):
        fetch("tiny-bs-test", progress=False)
    assert not checkpoint.exists()


def test_a_404_is_a_clear_error(user_registry, server):
    add, _, _, cache = user_registry
    add("tiny-missing", url=f"{server[0]}/nothing-here.ckpt")
    with pytest.raises(DownloadError, match="answered HTTP 404"):
        fetch("tiny-missing", progress=False)
    assert not (cache / "tiny-missing" / "tiny.ckpt").exists()


def test_redirects_are_followed(user_registry, server):
    add, handler, weights, _ = user_registry
    handler.redirects["/resolve/tiny.ckpt"] = "/tiny.ckpt"
    add("tiny-redirected", url=f"{server[0]}/resolve/tiny.ckpt")
    _, checkpoint = fetch("tiny-redirected", progress=False)
    assert checkpoint.read_bytes() == weights
    assert [path for path, _ in handler.log][-2:] == ["/resolve/tiny.ckpt", "/tiny.ckpt"]


def test_offline_mode_uses_the_cache_and_names_what_is_missing(user_registry, monkeypatch):
    add, handler, _, _ = user_registry
    fetch("tiny-bs-test", progress=False)
    add("tiny-uncached")
    requests_before = len(handler.log)
    monkeypatch.setenv("BS_ROFORMER_OFFLINE", "1")
    assert fetch("tiny-bs-test", progress=False)[1].is_file()
    with pytest.raises(DownloadError, match="tiny-uncached is not in the cache .* BS_ROFORMER_OFFLINE"):
        fetch("tiny-uncached", progress=False)
    assert len(handler.log) == requests_before


def test_unknown_and_unsupported_ids_say_why(user_registry):
    with pytest.raises(ValueError, match="no published model named 'tiny-bs-tset'; did you mean tiny-bs-test"):
        fetch("tiny-bs-tset")
    unsupported = next(entry for entry in load_registry().values() if entry["unsupported"])
    with pytest.raises(ValueError, match="cannot run it: " + unsupported["unsupported"][:20]):
        fetch(unsupported["id"])


def test_separate_by_model_name_end_to_end(user_registry, tmp_path, capsys):
    song = tmp_path / "song.wav"
    soundfile.write(song, torch.randn(11025, 2).numpy() * 0.1, 44100)
    assert main(["separate", str(song), "-n", "tiny-bs-test", "-o", str(tmp_path / "out"), "-q"]) == 0
    vocals, rate = soundfile.read(tmp_path / "out" / "tiny-bs-test" / "song" / "vocals.wav")
    assert rate == 44100 and vocals.shape == (11025, 2)
    capsys.readouterr()
    assert main(["models", "--json"]) == 0
    listed = {entry["id"]: entry for entry in json.loads(capsys.readouterr().out)}
    assert listed["tiny-bs-test"]["cached"] is True and "kim-mel-vocals" in listed
    assert main(["models", "--stem", "vocals", "--arch", "bs"]) == 0
    table = capsys.readouterr().out
    assert "tiny-bs-test" in table and "kim-mel-vocals" not in table.split("not supported")[0]


def test_pull_and_separator_from_pretrained(user_registry):
    from bs_roformer.separate import Separator

    _, handler, _, _ = user_registry
    assert main(["pull", "tiny-bs-test", "-q"]) == 0
    separator = Separator.from_pretrained("tiny-bs-test", progress=False, batch_size=1)
    assert separator.stems == ["vocals"] and separator.batch_size == 1
    assert len(handler.log) == 2
    assert main(["pull", "tiny-no-such-model"]) == 1


# ---------- the shipped registry ----------

def shipped_entries() -> list[dict]:
    return json.loads(pretrained.PACKAGE_REGISTRY.read_text())["models"]


def test_every_shipped_entry_matches_the_schema_with_unique_lowercase_ids_and_https_urls():
    entries = shipped_entries()
    ids = [entry["id"] for entry in entries]
    assert len(ids) == len(set(ids)) and all(name == name.lower() for name in ids)
    problems = [problem for entry in entries for problem in pretrained.entry_problems(entry)]
    assert problems == []
    urls = [url for entry in entries for url in entry["checkpoint"]["urls"]]
    assert urls and all(url.startswith("https://") for url in urls)
    supported = [entry for entry in entries if not entry["unsupported"]]
    assert len(supported) >= 100 and any(entry["id"] == "kim-mel-vocals" for entry in supported)
    assert all(entry["checkpoint"]["sha256"] is None or len(entry["checkpoint"]["sha256"]) == 64 for entry in entries)


def test_every_supported_shipped_config_builds_with_its_stems_and_fits_its_file_size():
    checked = {}
    for entry in shipped_entries():
        if entry["unsupported"]:
            continue
        config = load_config(pretrained.FOLDER / entry["config"])
        assert stem_names(config) == entry["stems"], entry["id"]
        layout = json.dumps([config["model"], config["training"].get("model_type")], sort_keys=True)
        if layout not in checked:  # many fine-tunes share their base model's layout: build each layout once
            checked[layout] = state_shapes(config)
        size = entry["checkpoint"]["size"]
        if size is not None:
            assert size_problem(checked[layout], size) is None, entry["id"]
    assert len(checked) > 20


def test_the_size_check_catches_a_config_one_layer_deeper_than_its_checkpoint():
    entry = next(entry for entry in shipped_entries() if entry["id"] == "kim-mel-vocals")
    config = load_config(pretrained.FOLDER / entry["config"])
    assert config["model"]["zero_dc"] is False  # Kim's model was trained before MSST added zero_dc
    size = entry["checkpoint"]["size"]
    assert size_problem(state_shapes(config), size) is None
    config["model"]["depth"] += 1
    assert "the checkpoint file has 913,106,900 bytes" in size_problem(state_shapes(config), size)
    shapes = state_shapes(TINY)
    assert set(shapes) == set(build_model(TINY, "bs_roformer").state_dict())  # meta build: the real key set


def test_the_build_script_marks_an_option_this_package_lacks_as_unsupported():
    spec = importlib.util.spec_from_file_location("build_registry", ROOT / "scripts" / "build_registry.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    record = dict(unsupported=None, architecture="bs_roformer", stems=["vocals"],
                  checkpoint=dict(urls=["https://example.org/x.ckpt"], size=None), _config=json.loads(json.dumps(TINY)))
    assert script.judge(record) is None
    record["_config"]["model"]["use_fno"] = True  # an option this package does not have
    assert script.judge(record) == "needs model option use_fno"
    record["_config"]["model"].pop("use_fno")
    record["_config"]["training"]["model_type"] = "bs_roformer_fno"
    assert script.judge(record) == "model type bs_roformer_fno"


def test_evaluate_and_train_take_a_model_name(user_registry, tmp_path, monkeypatch, capsys):
    import bs_roformer.train

    track = tmp_path / "test" / "song"
    track.mkdir(parents=True)
    for stem in ("vocals", "other"):
        soundfile.write(track / f"{stem}.wav", torch.randn(11025, 2).numpy() * 0.1, 44100)
    assert main(["evaluate", "-n", "tiny-bs-test", "--data", str(tmp_path / "test"), "-q"]) == 0
    assert "vocals" in capsys.readouterr().out
    given = {}
    monkeypatch.setattr(bs_roformer.train, "train", lambda *args, **options: given.update(options) or {"step": 0})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(TINY))
    assert main(["train", "-c", str(tmp_path / "config.yaml"), "--data", str(tmp_path / "test"), "--out",
                 str(tmp_path / "run"), "--init", "tiny-bs-test", "-q"]) == 0
    assert given["init_checkpoint"] == fetch("tiny-bs-test")[1]


def test_export_takes_a_model_name(user_registry, tmp_path, capsys):
    """`bs-roformer export -n ID` fetches the model and records its id and digest in the file."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    assert main(["export", "-n", "tiny-bs-test", "-o", str(tmp_path / "tiny.onnx"), "-q"]) == 0
    metadata = {item.key: item.value for item in onnx.load(str(tmp_path / "tiny.onnx")).metadata_props}
    config, checkpoint = fetch("tiny-bs-test", progress=False)
    assert metadata["source_model"] == "tiny-bs-test"
    assert metadata["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
