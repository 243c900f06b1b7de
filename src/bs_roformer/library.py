"""Separating a whole library: one process, or many through torchrun, each on its share of the files, with a
ledger that makes every run resumable.

    torchrun --nproc-per-node 8 -m bs_roformer separate LIBRARY -n MODEL -o OUT

- The plan: rank 0 lists the files, leaves out those the ledger records as done (same file, same model and
  settings, outputs on disk), and deals the rest out largest first, each to the least-loaded rank, so that ranks
  finish together; the shares are broadcast (torch.distributed, gloo: see `start_process_group`).
  That broadcast is the only collective: a rank that finishes early or crashes never makes another wait in one.
- The ledger: `OUT/.ledger/rank-R.jsonl`, one JSON line per file, appended, flushed and fsynced when the file is
  done (all its stems renamed into place) or has failed; a rank that dies loses only the file it was on. A rerun of
  the same command, with any number of processes, reads every rank's ledger and does only what is left.
- Rank 0 follows the job by reading the other ranks' ledgers (not by collectives, so a crashed or slow rank blocks
  nothing), prints one progress line for the whole job, waits for each rank's closing line and prints the summary.
- Within a rank, the next file is opened and decoded in a background thread (bounded read-ahead) while the model
  runs on the current one.
- Under torchrun a rank's failed files are in the ledger and its exit status is 0: torchrun stops every process
  when one exits non-zero. Rank 0 exits non-zero when any file of the job failed.
"""

import heapq
import json
import os
import queue
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .audio import AudioReader, Track

LEDGER_FOLDER = ".ledger"
READ_AHEAD_BLOCKS = 32  # blocks of audio.BLOCK_FRAMES decoded ahead per file: ~64 MB of stereo float32


# ---- where this process stands in the job --------------------------------------------------------------------------

@dataclass
class Job:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> "Job":
        return cls(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                   int(os.environ.get("LOCAL_RANK", "0")))

    def device(self, device: str) -> str:
        """The device a rank separates on: under torchrun, `auto` or `cuda` means the GPU numbered LOCAL_RANK."""
        if self.world > 1 and device in ("auto", "cuda"):
            import torch

            if torch.cuda.is_available():
                return f"cuda:{self.local_rank % torch.cuda.device_count()}"
        return device


def start_process_group(job: Job) -> None:
    """gloo, on GPUs too: the job's one collective carries the plan, a Python object, from rank 0 (NCCL would want
    a GPU of its own per process, and GPU buffers, for nothing)."""
    import torch

    if job.world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")


# ---- the ledger ----------------------------------------------------------------------------------------------------

def ledger_folder(out_dir: Path) -> Path:
    return Path(out_dir) / LEDGER_FOLDER


class Ledger:
    """One rank's append-only ledger; each line reaches the disk (fsync) before `append` returns."""

    def __init__(self, out_dir: Path, rank: int):
        self.path = ledger_folder(out_dir) / f"rank-{rank}.jsonl"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as error:
            raise OSError(f"cannot write the ledger {self.path} ({error.strerror}): choose a writable -o folder") \
                from None
        size = os.fstat(self.fd).st_size
        if size:
            with open(self.path, "rb") as file:
                file.seek(size - 1)
                if file.read(1) != b"\n":
                    os.write(self.fd, b"\n")  # a line cut short by a crash ends here; the next one stays readable

    def append(self, record: dict):
        os.write(self.fd, (json.dumps(record, ensure_ascii=False) + "\n").encode())
        os.fsync(self.fd)

    def close(self):
        os.close(self.fd)


class LedgerReader:
    """Every rank's ledger in an output folder, read incrementally: `new_records()` gives the lines appended since
    the last call (a line still being written is left for the next call)."""

    def __init__(self, out_dir: Path):
        self.folder = ledger_folder(out_dir)
        self.offsets: dict[Path, int] = {}

    def new_records(self) -> list[dict]:
        records = []
        for path in sorted(self.folder.glob("rank-*.jsonl")):
            with open(path, "rb") as file:
                file.seek(self.offsets.get(path, 0))
                data = file.read()
            complete = data[: data.rfind(b"\n") + 1]
            self.offsets[path] = self.offsets.get(path, 0) + len(complete)
            for line in complete.splitlines():
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue  # a line cut short by a crash
        return records


def file_identity(path: Path) -> dict:
    """What a ledger line says about its input: the path (absolute), size and modification time."""
    stat = path.stat()
    return {"input": os.path.abspath(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def identity_key(record: dict) -> tuple:
    return record["input"], record["size"], record["mtime_ns"]


def job_settings(separator, names: list[str], output_format: str, template: str) -> dict:
    """The model and settings a ledger line was made with; a file is done only for the same ones."""
    return {**separator.settings(), "outputs": names, "format": output_format, "template": template}


def done_files(records: list[dict], settings: dict) -> set[tuple]:
    """The inputs (identity keys) a ledger records as done with these settings whose outputs are all on disk."""
    return {identity_key(record) for record in records
            if record.get("status") == "done" and record.get("settings") == settings
            and all(os.path.exists(path) for path in record["outputs"])}


# ---- the plan ------------------------------------------------------------------------------------------------------

def plan_shares(tracks: list[Track], sizes: list[int], world: int) -> list[list[Track]]:
    """Each rank's files: largest first, each to the rank with the fewest bytes so far (ties: by path, then the
    lowest rank), so that ranks finish at about the same time; deterministic."""
    shares: list[list[Track]] = [[] for _ in range(world)]
    loads = [(0, rank) for rank in range(world)]
    for size, track in sorted(zip(sizes, tracks), key=lambda item: (-item[0], str(item[1].path))):
        load, rank = heapq.heappop(loads)
        shares[rank].append(track)
        heapq.heappush(loads, (load + size, rank))
    return shares


@dataclass
class Plan:
    """What rank 0 decides and broadcasts: the run's id, each rank's files, and what it left out as done."""

    run: str
    shares: list[list[Track]]
    done: int = 0


def make_plan(tracks: list[Track], out_dir: Path, settings: dict, world: int, overwrite: bool) -> Plan:
    records = [] if overwrite else LedgerReader(out_dir).new_records()
    done = done_files(records, settings)
    pending, sizes = [], []
    for track in tracks:
        try:
            identity = file_identity(track.path)
        except OSError:
            identity = {"input": os.path.abspath(track.path), "size": 0, "mtime_ns": 0}  # fails, and is recorded
        if identity_key(identity) not in done:
            pending.append(track)
            sizes.append(identity["size"])
    return Plan(uuid.uuid4().hex[:12], plan_shares(pending, sizes, world), len(tracks) - len(pending))


def shared_plan(plan: Plan | None, job: Job) -> Plan:
    """Rank 0's plan, on every rank."""
    if job.world == 1:
        return plan
    import torch

    holder = [plan]
    torch.distributed.broadcast_object_list(holder, src=0)
    return holder[0]


# ---- files named in a list -----------------------------------------------------------------------------------------

def listed_tracks(source: str) -> tuple[list[Track], list[str]]:
    """The files named in a list (one path a line; `-`: standard input), as tracks whose {relpath} is their path
    under the listed files' common folder, so that files of the same name in different folders stay apart."""
    try:
        lines = sys.stdin.read().splitlines() if source == "-" else Path(source).read_text().splitlines()
    except OSError as error:
        raise FileNotFoundError(f"--files-from {source}: cannot read the list ({error.strerror})") from None
    paths = [Path(os.path.abspath(line.strip())) for line in lines if line.strip()]
    files = [path for path in paths if path.is_file()]
    problems = [f"{path}: no such file (listed in {source})" for path in paths if not path.is_file()]
    if not files:
        return [], problems
    root = Path(os.path.commonpath([path.parent for path in files]))
    return [Track.of(path, root) for path in files], problems


# ---- reading ahead -------------------------------------------------------------------------------------------------

class PrefetchedReader:
    """An AudioReader opened and read in a background thread, up to READ_AHEAD_BLOCKS blocks ahead of the consumer;
    the same interface (`info`, `blocks()`, `close()`). Opening is where ffmpeg decodes formats libsndfile cannot
    read, so for the next file it happens while the model runs on this one. Errors are raised to the consumer."""

    _END = object()

    def __init__(self, path: Path):
        self.path = path
        self.opened = threading.Event()
        self.stopping = threading.Event()
        self.queue: queue.Queue = queue.Queue(READ_AHEAD_BLOCKS)
        self.error: BaseException | None = None
        self.reader: AudioReader | None = None
        self.thread = threading.Thread(target=self._read, name=f"read {path.name}", daemon=True)
        self.thread.start()

    def _read(self):
        try:
            self.reader = AudioReader(self.path)
        except BaseException as error:
            self.error = error
        self.opened.set()
        if self.error is not None:
            return
        try:
            for block in self.reader.blocks():
                if not self._put(block):
                    return
        except BaseException as error:
            self._put(error)
            return
        self._put(self._END)

    def _put(self, item) -> bool:
        while not self.stopping.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    @property
    def info(self):
        self.opened.wait()
        if self.error is not None:
            raise self.error
        return self.reader.info

    def blocks(self):
        self.info  # noqa: B018  (raises the opening error)
        while True:
            item = self.queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self):
        self.stopping.set()
        self.thread.join()
        if self.reader is not None:
            self.reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---- one rank's share ----------------------------------------------------------------------------------------------

class Terminated(BaseException):
    """SIGTERM arrived (a scheduler or torchrun stopping the job): the current file is abandoned, leaving no
    partial output (the writers remove their `.part` files), and the rank stops."""


def raise_terminated(signum, frame):
    raise Terminated()


@dataclass
class ShareResult:
    separated: int = 0
    kept: int = 0
    failed: int = 0
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    stopped: str | None = None  # "interrupted" or "terminated"
    abandoned: Path | None = None  # the file being separated when the share stopped
    errors: list[str] = field(default_factory=list)


def is_out_of_memory(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.OutOfMemoryError)


def separate_one(separator, track: Track, out_dir: Path, options: dict, reader):
    """separate_file, retried at half the batch size (of every model, for an ensemble) after each out-of-memory error
    down to a batch of 1 (the retries read the file afresh); the batch sizes are restored afterwards."""
    import torch

    models = getattr(separator, "separators", [separator])  # an EnsembleSeparator's members
    batch_sizes = [model.batch_size for model in models]
    try:
        while True:
            try:
                return separator.separate_file(track.path, out_dir, track=track, reader=reader, **options)
            except torch.OutOfMemoryError:
                if all(model.batch_size == 1 for model in models):
                    raise
                for model in models:
                    model.batch_size = max(1, model.batch_size // 2)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                reader.close()
                reader = AudioReader(track.path)
    finally:
        for model, batch_size in zip(models, batch_sizes):
            model.batch_size = batch_size
        reader.close()


def separate_share(separator, tracks: list[Track], out_dir: Path, options: dict, ledger: Ledger, settings: dict,
                   run: str, rank: int = 0, prefetch: bool = True, report=None) -> ShareResult:
    """Separate a rank's files in order, appending a ledger line for each done or failed one; files whose outputs
    all exist are kept. `report(track, result_or_error)` is called after each file. SIGTERM and Ctrl-C abandon the
    current file (no partial output, no ledger line) and end the share."""
    result, start = ShareResult(), time.perf_counter()
    in_main_thread = threading.current_thread() is threading.main_thread()  # where Python runs signal handlers
    previous_handler = signal.signal(signal.SIGTERM, raise_terminated) if in_main_thread else None
    opened = PrefetchedReader if prefetch else AudioReader
    upcoming, track = None, None
    try:
        for index, track in enumerate(tracks):
            began = time.perf_counter()
            reader = None
            try:
                reader = upcoming if upcoming is not None else opened(track.path)
                upcoming = None
                if prefetch and index + 1 < len(tracks):
                    upcoming = PrefetchedReader(tracks[index + 1].path)
                identity = file_identity(track.path)
                file_result = separate_one(separator, track, out_dir, options, reader)
            except FileExistsError as error:
                result.kept += 1
                if report:
                    report(track, error)
                continue
            except Exception as error:  # a bad file is recorded and the rank goes on
                if reader is not None:
                    reader.close()
                result.failed += 1
                message = str(error) if str(track.path) in str(error) else f"{track.path}: {error}"
                if is_out_of_memory(error):
                    message = f"{track.path}: out of memory even at a batch of 1 ({error})"
                result.errors.append(message)
                ledger.append({**file_identity_or_path(track.path), "status": "failed", "error": message,
                               "settings": settings, "rank": rank, "run": run,
                               "seconds": round(time.perf_counter() - began, 3)})
                if report:
                    report(track, error)
                continue
            outputs = separator.output_paths(track, out_dir, options["template"], options["output_format"],
                                             settings["outputs"])
            ledger.append({**identity, "status": "done", "outputs": [str(path) for path in outputs.values()],
                           "audio_seconds": round(file_result.seconds, 3), "settings": settings, "rank": rank,
                           "run": run, "seconds": round(time.perf_counter() - began, 3)})
            result.separated += 1
            result.audio_seconds += file_result.seconds
            if report:
                report(track, file_result)
    except KeyboardInterrupt:
        result.stopped, result.abandoned = "interrupted", getattr(track, "path", None)
    except Terminated:
        result.stopped, result.abandoned = "terminated", getattr(track, "path", None)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_handler)
        if upcoming is not None:
            upcoming.close()
    result.wall_seconds = time.perf_counter() - start
    return result


def file_identity_or_path(path: Path) -> dict:
    try:
        return file_identity(path)
    except OSError:
        return {"input": os.path.abspath(path), "size": None, "mtime_ns": None}


# ---- the whole job -------------------------------------------------------------------------------------------------

def separate_tracks(separator, tracks: list[Track] | None, names: list[str], args, job: Job,
                    failed: int = 0) -> int:
    """Separate the job's files (`tracks`: rank 0's list; the other ranks get their share from it) into args.output
    with the ledger, then report. Exit status: 1 if any file failed (under torchrun: on rank 0 only), 130 on Ctrl-C,
    143 on SIGTERM."""
    out_dir = Path(args.output)
    settings = job_settings(separator, names, args.format, args.filename)
    start_process_group(job)
    plan = shared_plan(make_plan(tracks, out_dir, settings, job.world, args.overwrite) if job.rank == 0 else None,
                       job)
    share = plan.shares[job.rank]
    options = dict(template=args.filename, output_format=args.format, stems=names, overwrite=args.overwrite,
                   progress=not args.quiet and job.world == 1)
    ledger = Ledger(out_dir, job.rank)
    watcher = None
    if job.rank == 0 and job.world > 1 and not args.quiet:
        watcher = JobProgress(out_dir, plan)
    report = print_file_report if job.world == 1 and not args.quiet else report_errors_only
    try:
        result = separate_share(separator, share, out_dir, options, ledger, settings, plan.run, job.rank,
                                report=report)
        if result.stopped:
            print(f"{result.stopped}: no outputs written for {result.abandoned} ({result.separated} file(s) done "
                  f"before it, recorded in {ledger.path})", file=sys.stderr)
            return 130 if result.stopped == "interrupted" else 143
        ledger.append({"event": "finished", "run": plan.run, "rank": job.rank, "files": len(share),
                       "separated": result.separated, "kept": result.kept, "failed": result.failed,
                       "audio_seconds": round(result.audio_seconds, 3),
                       "wall_seconds": round(result.wall_seconds, 3)})
        finished = wait_for_ranks(out_dir, plan, job.world) if job.rank == 0 and job.world > 1 else None
    finally:
        ledger.close()
        if watcher is not None:
            watcher.stop()
    if job.world == 1:
        total_failed = failed + result.failed
        print(f"{result.separated} separated, {result.kept + plan.done} kept (outputs exist), {total_failed} "
              f"failed; {result.audio_seconds:.1f} s of audio in {result.wall_seconds:.1f} s "
              f"({result.audio_seconds / max(result.wall_seconds, 1e-9):.1f}x real time)")
        return 1 if total_failed else 0
    if job.rank != 0:
        return 0  # torchrun stops every rank when one exits non-zero; rank 0 reports the job's failures
    print(job_summary(finished, plan, failed))
    if any(record["failed"] for record in finished.values()):
        print(f"the failed files and their errors: the lines with \"status\": \"failed\" in "
              f"{ledger_folder(out_dir)}", file=sys.stderr)
    failures = failed + sum(record["failed"] for record in finished.values())
    return 1 if failures else 0


def print_file_report(track: Track, outcome):
    if isinstance(outcome, FileExistsError):
        print(f"skipped {track.path}: {outcome}", file=sys.stderr)
    elif isinstance(outcome, Exception):
        report_errors_only(track, outcome)
    else:
        print(f"{track.path} -> {', '.join(map(str, outcome.paths))}")


def report_errors_only(track: Track, outcome):
    if isinstance(outcome, Exception) and not isinstance(outcome, FileExistsError):
        message = str(outcome) if str(track.path) in str(outcome) else f"{track.path}: {outcome}"
        print(f"error: {message}", file=sys.stderr)


def wait_for_ranks(out_dir: Path, plan: Plan, world: int, poll_seconds: float = 0.5) -> dict[int, dict]:
    """Each rank's closing ledger line for this run, waiting for them (torchrun stops the job if a rank crashes)."""
    reader, finished = LedgerReader(out_dir), {}
    while len(finished) < world:
        for record in reader.new_records():
            if record.get("event") == "finished" and record.get("run") == plan.run:
                finished[record["rank"]] = record
        if len(finished) < world:
            time.sleep(poll_seconds)
    return finished


def job_summary(finished: dict[int, dict], plan: Plan, failed_inputs: int) -> str:
    """The job's totals, then one line per rank: files, hours of audio, audio-hours per hour, failures."""
    separated = sum(record["separated"] for record in finished.values())
    kept = sum(record["kept"] for record in finished.values()) + plan.done
    failed = sum(record["failed"] for record in finished.values()) + failed_inputs
    audio_hours = sum(record["audio_seconds"] for record in finished.values()) / 3600
    wall_hours = max(record["wall_seconds"] for record in finished.values()) / 3600
    lines = [f"{separated} separated, {kept} kept (outputs exist), {failed} failed on {len(finished)} ranks; "
             f"{audio_hours:.3f} h of audio in {wall_hours:.3f} h ({audio_hours / max(wall_hours, 1e-12):.1f} "
             "audio-hours per hour)"]
    for rank, record in sorted(finished.items()):
        hours, wall = record["audio_seconds"] / 3600, record["wall_seconds"] / 3600
        lines.append(f"  rank {rank}: {record['files']} files, {hours:.3f} h of audio, "
                     f"{hours / max(wall, 1e-12):.1f} audio-hours per hour, {record['failed']} failed")
    return "\n".join(lines)


class JobProgress:
    """Rank 0's one line for the whole job, from every rank's ledger, refreshed in a background thread."""

    def __init__(self, out_dir: Path, plan: Plan, interval: float = 2.0):
        self.reader, self.plan, self.interval = LedgerReader(out_dir), plan, interval
        self.total = sum(len(share) for share in plan.shares)
        self.done = self.failed = 0
        self.audio_seconds, self.start = 0.0, time.perf_counter()
        self.stopping = threading.Event()
        self.reader.new_records()  # earlier runs' lines
        self.thread = threading.Thread(target=self._run, name="job progress", daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping.wait(self.interval):
            self.update()

    def update(self):
        changed = False
        for record in self.reader.new_records():
            if record.get("run") != self.plan.run or "status" not in record:
                continue
            changed = True
            self.done += 1
            self.failed += record["status"] == "failed"
            self.audio_seconds += record.get("audio_seconds") or 0.0
        if changed:
            elapsed = time.perf_counter() - self.start
            print(f"job: {self.done}/{self.total} files ({self.failed} failed), {self.audio_seconds / 3600:.3f} h "
                  f"of audio, {self.audio_seconds / max(elapsed, 1e-9):.1f} audio-s per s", file=sys.stderr)

    def stop(self):
        """Stop, after a last look at the ledgers."""
        self.stopping.set()
        self.thread.join()
        self.update()
