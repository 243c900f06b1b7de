"""Separating a library: the plan, the ledger (resuming, skipping), --files-from, read-ahead, out-of-memory retries,
and 2 processes under torchrun (gloo, CPU) against one."""

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml

from bs_roformer import BSRoformer
from bs_roformer.audio import Track
from bs_roformer.cli import main
from bs_roformer.library import Ledger, LedgerReader, job_settings, plan_shares, separate_share
from bs_roformer.separate import Separator

MODEL = dict(dim=16, depth=1, heads=2, dim_head=8, time_transformer_depth=1, freq_transformer_depth=1,
             stft_n_fft=512, stft_win_length=512, stft_hop_length=128, stereo=True, num_stems=2,
             freqs_per_bands=[2, 2, 4, 4, 8, 8, 16, 16, 32, 32, 64, 69])
CONFIG = {"audio": {"sample_rate": 44100, "chunk_size": 8192}, "model": MODEL,
          "training": {"instruments": ["vocals", "other"]}, "inference": {"num_overlap": 2, "batch_size": 4}}
SRC = Path(__file__).parents[1] / "src"


@pytest.fixture
def model_files(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    torch.manual_seed(0)
    torch.save(BSRoformer(**MODEL).state_dict(), tmp_path / "model.ckpt")
    return ["-c", str(tmp_path / "config.yaml"), "-m", str(tmp_path / "model.ckpt"), "--device", "cpu",
            "--precision", "fp32"]


def write_song(path: Path, seconds: float, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    audio = 0.2 * np.random.default_rng(seed).standard_normal((int(seconds * 44100), 2)).astype(np.float32)
    soundfile.write(str(path), audio, 44100, subtype="PCM_16" if path.suffix == ".flac" else "FLOAT")
    return path


def library(root: Path, names: list[str], seconds: float = 0.3) -> list[Path]:
    return [write_song(root / name, seconds + 0.05 * index, index) for index, name in enumerate(names)]


def ledger_lines(out: Path) -> list[dict]:
    return LedgerReader(out).new_records()


def done_inputs(out: Path) -> list[str]:
    return sorted(record["input"] for record in ledger_lines(out) if record.get("status") == "done")


def environment() -> dict:
    # GLIBC_TUNABLES set: no re-exec for the allocator settings; one thread: the same sums in every process
    return dict(os.environ, PYTHONPATH=str(SRC), GLIBC_TUNABLES="", OMP_NUM_THREADS="1")


def torchrun(args: list[str], processes: int = 2, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             f"--nproc-per-node={processes}", "-m", "bs_roformer", "separate", *args],
                            env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def outputs(out: Path) -> dict[str, np.ndarray]:
    return {path.relative_to(out).as_posix(): soundfile.read(str(path))[0] for path in sorted(out.rglob("*.wav"))}


# ---- the plan and the ledger -----------------------------------------------------------------------------------

def test_plan_deals_largest_first_to_the_least_loaded_rank():
    tracks = [Track(Path(f"{name}.wav"), name, name) for name in "abcdef"]
    sizes = [10, 60, 30, 30, 20, 50]
    shares = plan_shares(tracks, sizes, 3)
    assert [[track.name for track in share] for share in shares] == [["b", "a"], ["f", "e"], ["c", "d"]]
    assert plan_shares(tracks, sizes, 3) == shares and plan_shares(tracks, sizes, 1) == [
        [tracks[i] for i in (1, 5, 2, 3, 4, 0)]]


def test_a_line_cut_short_by_a_crash_is_skipped_and_the_next_one_readable(tmp_path):
    ledger = Ledger(tmp_path, 0)
    ledger.append({"n": 1})
    ledger.close()
    with open(ledger.path, "a") as file:
        file.write('{"n": 2, "stat')  # a crash in the middle of a line
    ledger = Ledger(tmp_path, 0)
    ledger.append({"n": 3})
    ledger.close()
    assert [record["n"] for record in ledger_lines(tmp_path)] == [1, 3]


def test_rerun_skips_done_files_and_redoes_failed_and_missing_ones(tmp_path, model_files, capsys):
    songs = library(tmp_path / "songs", ["a.wav", "b.wav", "c.wav"])
    broken = tmp_path / "songs" / "broken.wav"
    broken.write_bytes(b"RIFF....WAVEfmt garbage")
    out = tmp_path / "out"
    run = ["separate", str(tmp_path / "songs"), *model_files, "-o", str(out), "-q"]
    assert main(run) == 1
    assert "3 separated, 0 kept (outputs exist), 1 failed" in capsys.readouterr().out
    records = ledger_lines(out)
    assert sorted(r["status"] for r in records if "status" in r) == ["done", "done", "done", "failed"]
    failed = next(r for r in records if r.get("status") == "failed")
    assert failed["input"] == str(broken) and "broken.wav" in failed["error"]
    done = next(r for r in records if r.get("input") == str(songs[0]))
    assert done["outputs"] == [str(out / "model" / "a" / f"{stem}.wav") for stem in ("vocals", "other")]
    assert done["size"] == songs[0].stat().st_size and done["audio_seconds"] == pytest.approx(0.3, abs=1e-3)
    assert done["settings"]["model"] == "model" and done["settings"]["chunk_size"] == 8192

    mtimes = {path: path.stat().st_mtime_ns for path in out.rglob("*.wav")}
    (out / "model" / "b" / "other.wav").unlink()
    write_song(broken, 0.2, 9)  # fixed
    assert main(run) == 0
    assert "2 separated, 2 kept (outputs exist), 0 failed" in capsys.readouterr().out
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in mtimes.items() if "/b/" not in str(path))
    assert done_inputs(out).count(str(songs[1])) == 2 and done_inputs(out).count(str(songs[0])) == 1


def test_files_from_a_list_and_stdin_keep_folders_apart(tmp_path, model_files, monkeypatch, capsys):
    songs = library(tmp_path / "lib", ["x/song.wav", "y/song.wav", "y/deeper/other.flac"])
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(map(str, songs)) + "\n\n")
    out = tmp_path / "out"
    assert main(["separate", "--files-from", str(listing), *model_files, "-o", str(out), "-q",
                 "--stems", "vocals"]) == 0
    assert sorted(outputs(out)) == ["model/x/song/vocals.wav", "model/y/deeper/other/vocals.wav",
                                    "model/y/song/vocals.wav"]
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{songs[0]}\n{tmp_path / 'missing.wav'}\n"))
    assert main(["separate", "--files-from", "-", *model_files, "-o", str(tmp_path / "out2"), "-q"]) == 1
    captured = capsys.readouterr()
    assert "missing.wav: no such file (listed in -)" in captured.err
    assert (tmp_path / "out2" / "model" / "song" / "vocals.wav").is_file()  # one file: its name
    assert main(["separate", "--files-from", str(tmp_path / "nolist.txt"), *model_files, "-q"]) == 1
    assert f"--files-from {tmp_path / 'nolist.txt'}: cannot read the list" in capsys.readouterr().err


def test_same_names_in_two_input_folders_are_still_refused(tmp_path, model_files, capsys):
    library(tmp_path, ["one/song.wav", "two/song.wav"])
    assert main(["separate", str(tmp_path / "one"), str(tmp_path / "two"), *model_files, "-o",
                 str(tmp_path / "out"), "-q"]) == 1
    assert "would both write" in capsys.readouterr().err


# ---- one rank's share: read-ahead, out of memory -----------------------------------------------------------------

def separator(batch_size=4) -> Separator:
    torch.manual_seed(0)
    return Separator(BSRoformer(**MODEL), CONFIG, device="cpu", precision="fp32", batch_size=batch_size)


def share(tmp_path, out: Path, model: Separator, **options):
    tracks = [Track.of(path) for path in sorted((tmp_path / "songs").glob("*.wav"))]
    names = model.output_names()
    settings = job_settings(model, names, "wav32f", "{model}/{relpath}/{stem}.{ext}")
    ledger = Ledger(out, 0)
    result = separate_share(model, tracks, out, dict(template=settings["template"], output_format="wav32f",
                                                     stems=names, overwrite=False, progress=False),
                            ledger, settings, "run", **options)
    ledger.close()
    return result


def test_reading_ahead_gives_the_same_files(tmp_path):
    library(tmp_path / "songs", ["a.wav", "b.wav", "c.wav"])
    ahead = share(tmp_path, tmp_path / "ahead", separator(), prefetch=True)
    plain = share(tmp_path, tmp_path / "plain", separator(), prefetch=False)
    assert ahead.separated == plain.separated == 3
    first, second = outputs(tmp_path / "ahead"), outputs(tmp_path / "plain")
    assert first.keys() == second.keys() and len(first) == 6
    assert all(np.array_equal(first[name], second[name]) for name in first)


def test_out_of_memory_retries_at_half_the_batch_then_fails(tmp_path, monkeypatch):
    library(tmp_path / "songs", ["a.wav", "b.wav"])
    model = separator(batch_size=4)
    real, batches = model.separate_chunks, []

    def needs_small_batches(batch):
        batches.append(model.batch_size)
        if model.batch_size > limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(batch)

    monkeypatch.setattr(model, "separate_chunks", needs_small_batches)
    limit = 1
    result = share(tmp_path, tmp_path / "out", model)
    assert result.separated == 2 and result.failed == 0 and model.batch_size == 4
    assert batches[:3] == [4, 2, 1]
    limit = 0
    result = share(tmp_path, tmp_path / "out2", model)
    assert result.failed == 2 and "out of memory even at a batch of 1" in result.errors[0]
    assert not list((tmp_path / "out2").rglob("*.wav*"))


# ---- torchrun ------------------------------------------------------------------------------------------------

def test_two_ranks_separate_each_file_once_as_one_process_does(tmp_path, model_files):
    songs = library(tmp_path / "songs", ["a/song.wav", "b/song.wav", "c.wav", "d.wav", "e.wav"])
    (tmp_path / "songs" / "broken.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    one = subprocess.run([sys.executable, "-m", "bs_roformer", "separate", str(tmp_path / "songs"), *model_files,
                          "-o", str(tmp_path / "one"), "-q"], env=environment(), capture_output=True, text=True,
                         check=False)
    two = torchrun([str(tmp_path / "songs"), *model_files, "-o", str(tmp_path / "two")])
    stdout, stderr = two.communicate(timeout=300)
    assert one.returncode == 1 and two.returncode != 0, stderr  # the broken file
    assert "5 separated, 0 kept (outputs exist), 1 failed on 2 ranks" in stdout, stderr
    assert stdout.count("separated") == 1 and "rank 1:" in stdout
    assert "job: 6/6 files (1 failed)" in stderr and stderr.count("broken.wav: not an audio file") == 1
    records = ledger_lines(tmp_path / "two")
    assert done_inputs(tmp_path / "two") == sorted(map(str, songs))
    assert {r["rank"] for r in records if "status" in r} == {0, 1}
    assert [r["input"] for r in records if r.get("status") == "failed"] == [str(tmp_path / "songs" / "broken.wav")]
    first, second = outputs(tmp_path / "one"), outputs(tmp_path / "two")
    assert first.keys() == second.keys() and len(first) == 10 and "model/a/song/vocals.wav" in first
    assert all(np.array_equal(first[name], second[name]) for name in first)


def test_a_job_stopped_half_way_resumes_where_it_stopped(tmp_path, model_files):
    songs = library(tmp_path / "songs", [f"{index}.wav" for index in range(8)], seconds=1.5)
    out = tmp_path / "out"
    job = torchrun([str(tmp_path / "songs"), *model_files, "-o", str(out), "-q"])
    deadline = time.monotonic() + 200
    while not done_inputs(out) and time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.2)
    job.send_signal(signal.SIGTERM)  # as a scheduler stops a job: torchrun passes it to every rank
    job.communicate(timeout=120)
    first = done_inputs(out)
    assert 1 <= len(first) < len(songs) and len(set(first)) == len(first)
    assert not list(out.rglob("*.part"))
    mtimes = {path: path.stat().st_mtime_ns for path in out.rglob("*.wav")}
    assert len(mtimes) == 2 * len(first)  # the abandoned files left nothing

    rerun = torchrun([str(tmp_path / "songs"), *model_files, "-o", str(out), "-q"], processes=3)
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    assert f"{len(songs) - len(first)} separated, {len(first)} kept" in stdout
    assert done_inputs(out) == sorted(map(str, songs))  # each file done once, over both runs
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in mtimes.items())
    assert not list(out.rglob("*.part"))
