"""Separating a folder of songs with the demo model: throughput of one process against two under torchrun (audio
seconds per second of each run's separating time, from its summary line), the read-ahead on and off within one
process, and the ledger's cost per file.

    python benchmarks/library.py                  # 6 synthetic songs of 6 s, FLAC
    python benchmarks/library.py --songs 4 --seconds 4

The machine's load average is printed with the table: on a shared machine the numbers move with it.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import soundfile

SRC = Path(__file__).parents[1] / "src"


def write_songs(folder: Path, songs: int, seconds: float) -> float:
    from bs_roformer.data.synth import synthesize_track

    folder.mkdir(parents=True)
    for index in range(songs):
        mixture = sum(synthesize_track(500 + index, seconds).values())
        soundfile.write(str(folder / f"song{index}.flac"), (0.8 * mixture / abs(mixture).max()).T, 44100,
                        subtype="PCM_16")
    return songs * seconds


def separate_command(songs: Path, out: Path, processes: int, threads: int) -> float:
    """Audio seconds per second of separating time, as the run's summary reports it."""
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
                if processes > 1 else [sys.executable])
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS=str(threads))
    result = subprocess.run([*launcher, "-m", "bs_roformer", "separate", str(songs), "--demo", "-o", str(out), "-q",
                             "--precision", "fp32"], env=env, capture_output=True, text=True, check=True)
    if processes == 1:
        audio, wall = map(float, re.search(r"([\d.]+) s of audio in ([\d.]+) s", result.stdout).groups())
        return audio / wall
    return float(re.search(r"\(([\d.]+) audio-hours per hour\)", result.stdout).group(1))


def share_rate(songs: Path, out: Path, prefetch: bool) -> float:
    import torch

    from bs_roformer.audio import Track
    from bs_roformer.library import Ledger, job_settings, separate_share
    from bs_roformer.separate import Separator

    torch.set_num_threads(1)
    separator = Separator.demo(device="cpu", precision="fp32")
    names = separator.output_names()
    settings = job_settings(separator, names, "wav32f", "{model}/{relpath}/{stem}.{ext}")
    ledger = Ledger(out, 0)
    tracks = [Track.of(path) for path in sorted(songs.glob("*.flac"))]
    result = separate_share(separator, tracks, out, dict(template=settings["template"], output_format="wav32f",
                                                         stems=names, overwrite=False, progress=False),
                            ledger, settings, "bench", prefetch=prefetch)
    ledger.close()
    return result.audio_seconds / result.wall_seconds


def ledger_costs(folder: Path, lines: int = 200) -> tuple[float, float]:
    """(ms to append one line, fsync included; ms to read one line back when planning)."""
    from bs_roformer.library import Ledger, LedgerReader

    ledger = Ledger(folder, 0)
    record = {"input": "/library/artist/album/track.flac", "size": 31_000_000, "mtime_ns": 1, "status": "done",
              "outputs": ["/out/model/artist/album/track/vocals.wav"] * 2, "audio_seconds": 240.0,
              "settings": {"model": "m", "chunk_size": 352800, "num_overlap": 2}, "rank": 0, "run": "x", "seconds": 9}
    start = time.perf_counter()
    for _ in range(lines):
        ledger.append(record)
    append = (time.perf_counter() - start) / lines
    ledger.close()
    start = time.perf_counter()
    assert len(LedgerReader(folder).new_records()) == lines
    return 1000 * append, 1000 * (time.perf_counter() - start) / lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--songs", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        write_songs(folder / "songs", args.songs, args.seconds)
        load_before = os.getloadavg()[0]
        rows = [(f"1 process, {threads} thread(s)", separate_command(folder / "songs", folder / f"one{threads}", 1,
                                                                     threads)) for threads in (1, 2)]
        rows.append(("2 processes (torchrun), 1 thread each",
                     separate_command(folder / "songs", folder / "two", 2, 1)))
        rows += [(f"1 process, 1 thread, read-ahead {'on' if prefetch else 'off'}",
                  share_rate(folder / "songs", folder / f"share{prefetch}", prefetch)) for prefetch in (False, True)]
        append_ms, read_ms = ledger_costs(folder / "ledger")
        load_after = os.getloadavg()[0]
    print(f"{args.songs} songs of {args.seconds:g} s (FLAC), demo model, fp32; load average {load_before:.1f} before, "
          f"{load_after:.1f} after, on {os.cpu_count()} CPUs\n")
    print("| run | audio-s per s |\n|---|---|")
    for name, rate in rows:
        print(f"| {name} | {rate:.2f} |")
    print(f"\nledger: {append_ms:.2f} ms to append a line (fsync included), {read_ms:.3f} ms to read one back")


if __name__ == "__main__":
    main()
