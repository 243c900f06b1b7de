"""The server's working folder and its job queue: uploads, one worker thread running the Separator, results.

Everything the server writes lies under one folder (`uploads/<id>/<name>`, `jobs/<id>/...`). One worker runs one
job at a time, so a long file never blocks the HTTP side, which only reads job states (under a lock)."""

import queue
import re
import shutil
import threading
import time
import traceback
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ..audio import OUTPUT_FORMATS, AudioError
from .models import LoadedModel, ModelSpec, check_spec
from .spectrogram import write_spectrogram

JOBS_KEPT = 10  # finished jobs whose files are kept; older ones are deleted when a new job comes
UPLOAD_LIFETIME_S = 3600  # uploads no job claimed are deleted after this
PRECISIONS = ("fp32", "bf16", "fp16")


class ServerClosing(Exception):
    """Raised in the worker to stop a separation when the server shuts down."""


def safe_name(name: str) -> str:
    """An uploaded file name reduced to its last path part, with letters, digits, '.', '-', '_' and spaces only and
    no leading dot (so no '..', no folders, no hidden files)."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = re.sub(r"[^\w.\- ]", "_", base).strip(" .")
    return cleaned[-120:] or "upload"


@dataclass(frozen=True)
class Settings:
    model: ModelSpec
    device: str = "auto"
    precision: str = "fp32"
    overlap: int | None = None  # None: the config's num_overlap
    tta: bool = False
    instrumental: bool = False
    output_format: str = "wav32f"


@dataclass
class FileTask:
    name: str  # the sanitised upload name, as the page shows it
    source: Path
    out_dir: Path
    state: str = "queued"  # queued, running, done, failed
    done_seconds: float = 0.0
    total_seconds: float = 0.0
    speed: float = 0.0  # audio seconds separated per second
    error: str = ""
    stems: dict[str, Path] = field(default_factory=dict)  # output name -> file
    spectrograms: dict[str, Path] = field(default_factory=dict)  # "mixture" and output names -> png


@dataclass
class Job:
    id: str
    settings: Settings
    files: list[FileTask]
    folder: Path
    state: str = "queued"  # queued, running, done, failed (every file failed, or the model did)
    error: str = ""
    created: float = field(default_factory=time.time)


def error_message(error: BaseException, task: FileTask | None = None) -> str:
    """One line for the page: expected errors as they read, others with their type; server paths become names."""
    expected = isinstance(error, (AudioError, ValueError, OSError, ServerClosing))
    text = str(error) if expected else f"{type(error).__name__}: {error}"
    if task is not None:
        text = text.replace(str(task.source), task.name)
    return text.splitlines()[0] if text else type(error).__name__


class JobQueue:
    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.uploads, self.results = self.workdir / "uploads", self.workdir / "jobs"
        self.uploads.mkdir(parents=True, exist_ok=True)
        self.results.mkdir(parents=True, exist_ok=True)
        self.jobs: dict[str, Job] = {}  # in submission order
        self.lock = threading.Lock()
        self.pending: queue.Queue = queue.Queue()
        self.closing = threading.Event()
        self.model = LoadedModel()
        self.worker = threading.Thread(target=self._work, name="separation worker", daemon=True)
        self.worker.start()

    # -- uploads --

    def new_upload(self, name: str) -> tuple[str, Path]:
        """(upload id, path to write the file to) under the working folder."""
        self._drop_stale_uploads()
        upload_id = uuid.uuid4().hex
        folder = self.uploads / upload_id
        folder.mkdir()
        return upload_id, folder / safe_name(name)

    def drop_upload(self, upload_id: str):
        shutil.rmtree(self.uploads / upload_id, ignore_errors=True)

    def _upload_path(self, upload_id: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{32}", upload_id):
            raise ValueError(f"unknown upload {upload_id!r}")
        files = list((self.uploads / upload_id).glob("*"))
        if len(files) != 1:
            raise ValueError(f"unknown upload {upload_id!r} (uploads are deleted when a job takes them or after "
                             f"{UPLOAD_LIFETIME_S // 60} minutes): upload the file again")
        return files[0]

    def _drop_stale_uploads(self):
        for folder in self.uploads.iterdir():
            if time.time() - folder.stat().st_mtime > UPLOAD_LIFETIME_S:
                shutil.rmtree(folder, ignore_errors=True)

    # -- jobs --

    def submit(self, upload_ids: list[str], settings: Settings) -> Job:
        """Queue a job over uploaded files (moved into the job's folder); ValueError / FileNotFoundError for
        settings that cannot run, before anything is queued."""
        from ..separate import resolve_device

        if not upload_ids:
            raise ValueError("choose at least one audio file")
        if len(set(upload_ids)) != len(upload_ids):
            raise ValueError("an upload is listed twice: upload the file again to separate it twice")
        if settings.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {settings.precision!r}")
        if settings.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output format must be one of {', '.join(OUTPUT_FORMATS)}")
        if settings.overlap is not None and settings.overlap < 1:
            raise ValueError(f"overlap must be at least 1, got {settings.overlap}")
        resolve_device(settings.device)
        check_spec(settings.model)
        sources = [self._upload_path(upload_id) for upload_id in upload_ids]

        job_id = uuid.uuid4().hex[:12]
        folder = self.results / job_id
        files = []
        for index, source in enumerate(sources):
            inputs = folder / f"{index}" / "input"
            inputs.mkdir(parents=True)
            moved = inputs / source.name
            shutil.move(source, moved)
            shutil.rmtree(source.parent, ignore_errors=True)
            files.append(FileTask(source.name, moved, folder / f"{index}" / "output"))
        job = Job(job_id, settings, files, folder)
        with self.lock:
            self.jobs[job_id] = job
            self._drop_old_jobs()
        self.pending.put(job)
        return job

    def _drop_old_jobs(self):
        finished = [job for job in self.jobs.values() if job.state in ("done", "failed")]
        for job in finished[: max(len(finished) - JOBS_KEPT, 0)]:
            del self.jobs[job.id]
            shutil.rmtree(job.folder, ignore_errors=True)

    def get(self, job_id: str) -> Job | None:
        with self.lock:
            return self.jobs.get(job_id)

    def all_jobs(self) -> list[Job]:
        with self.lock:
            return list(self.jobs.values())

    def snapshot(self, job: Job) -> dict:
        """The job as the page shows it; file paths become URLs under /api/jobs/<id>/files/."""
        def url(path: Path) -> str:
            return f"/api/jobs/{job.id}/files/{path.relative_to(job.folder).as_posix()}"

        with self.lock:
            settings = job.settings
            return {
                "id": job.id, "state": job.state, "error": job.error, "created": job.created,
                "model": settings.model.id if settings.model.id != "local" else f"local: {settings.model.checkpoint}",
                "settings": {"device": settings.device, "precision": settings.precision, "overlap": settings.overlap,
                             "tta": settings.tta, "instrumental": settings.instrumental,
                             "output_format": settings.output_format},
                "zip": f"/api/jobs/{job.id}/zip" if any(task.stems for task in job.files) else None,
                "files": [{
                    "name": task.name, "state": task.state, "error": task.error,
                    "done_seconds": task.done_seconds, "total_seconds": task.total_seconds, "speed": task.speed,
                    "mixture_audio": url(task.source),
                    "mixture_spectrogram": url(task.spectrograms["mixture"]) if "mixture" in task.spectrograms
                    else None,
                    "stems": [{"name": name, "audio": url(path), "spectrogram": url(task.spectrograms[name])}
                              for name, path in task.stems.items()],
                } for task in job.files],
            }

    def zip_path(self, job: Job) -> Path:
        """A zip of all the job's stems, `<track>/<stem>.<ext>` (made once, atomically)."""
        archive = job.folder / "stems.zip"
        if not archive.exists():
            partial = archive.with_name(f"stems.zip.{uuid.uuid4().hex}.part")  # two requests at once: two files
            tracks = set()
            with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as out:
                for task in job.files:
                    track, number = Path(task.name).stem, 2
                    while track in tracks:  # two uploads of the same name keep apart
                        track, number = f"{Path(task.name).stem} ({number})", number + 1
                    tracks.add(track)
                    for path in task.stems.values():
                        out.write(path, f"{track}/{path.name}")
            partial.replace(archive)
        return archive

    def close(self):
        """Stop the worker (a running separation stops at its next progress report, its files removed), then delete
        the working folder. Called at server shutdown; joining the worker first means no thread is inside torch when
        the interpreter exits (which aborts the process)."""
        self.closing.set()
        self.pending.put(None)
        self.worker.join(timeout=60)
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- the worker --

    def _work(self):
        while (job := self.pending.get()) is not None and not self.closing.is_set():
            try:
                self._run(job)
            except Exception as error:  # a bug must not kill the only worker: fail the job, keep serving
                traceback.print_exc()
                with self.lock:
                    job.state, job.error = "failed", error_message(error)

    def _run(self, job: Job):
        from ..device import resolve_device
        from ..separate import Separator

        with self.lock:
            job.state = "running"
        settings = job.settings
        try:
            device = resolve_device(settings.device)
            model, config = self.model.get(settings.model, device)
            separator = Separator(model, config, device=device, precision=settings.precision,
                                  num_overlap=settings.overlap, tta=settings.tta)
        except Exception as error:
            with self.lock:
                job.state, job.error = "failed", f"the model cannot run: {error_message(error)}"
                for task in job.files:
                    task.state = "failed"
            return
        for task in job.files:
            self._run_file(separator, task, settings)
        with self.lock:
            job.state = "failed" if all(task.state == "failed" for task in job.files) else "done"

    def _run_file(self, separator, task: FileTask, settings: Settings):
        with self.lock:
            task.state = "running"
        start = time.perf_counter()

        def report(done_seconds: float, total_seconds: float):
            if self.closing.is_set():
                raise ServerClosing("the server stopped before this file was done")
            with self.lock:
                task.done_seconds, task.total_seconds = done_seconds, total_seconds
                task.speed = done_seconds / max(time.perf_counter() - start, 1e-9)

        try:
            written = separator.separate_file(task.source, task.out_dir, template="{stem}.{ext}",
                                              output_format=settings.output_format,
                                              instrumental=settings.instrumental, progress=report).paths
            pictures = task.out_dir / "spectrograms"
            pictures.mkdir()
            spectrograms = {"mixture": pictures / "mixture.png"}
            peak = write_spectrogram(task.source, spectrograms["mixture"], f"mixture: {task.name}")
            for path in written:
                spectrograms[path.stem] = pictures / f"{path.stem}.png"
                write_spectrogram(path, spectrograms[path.stem], path.stem, reference_power=peak)
        except Exception as error:
            shutil.rmtree(task.out_dir, ignore_errors=True)  # no partial results
            if not isinstance(error, (AudioError, ValueError, OSError, ServerClosing)):
                traceback.print_exc()
            with self.lock:
                task.state, task.error = "failed", error_message(error, task)
            return
        with self.lock:
            task.state, task.stems, task.spectrograms = "done", {path.stem: path for path in written}, spectrograms
