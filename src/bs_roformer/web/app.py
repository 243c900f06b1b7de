"""The HTTP side: a FastAPI app serving the page (static/), uploads, jobs and their files. Route functions only
translate HTTP to the JobQueue (request.app.state.jobs) and back."""

from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from ..audio import OUTPUT_FORMATS
from .jobs import PRECISIONS, Job, JobQueue, Settings
from .models import DEMO, ModelSpec, available_devices, menu

STATIC = Path(__file__).parent / "static"

router = APIRouter()


class JobRequest(BaseModel):
    uploads: list[str]  # ids from POST /api/uploads
    model: str = DEMO  # a model id of GET /api/models
    config: str = ""  # with model "local": the config's path on this machine
    checkpoint: str = ""  # with model "local": the checkpoint's path
    device: str = "auto"
    precision: str = "fp32"
    overlap: int | None = Field(default=None, ge=1)
    tta: bool = False
    instrumental: bool = False
    output_format: str = "wav32f"


@router.get("/", include_in_schema=False)
def page():
    return FileResponse(STATIC / "index.html")


@router.get("/api/models")
def models(request: Request):
    return {"models": [choice.to_json() for choice in menu()], "devices": available_devices(),
            "precisions": list(PRECISIONS), "formats": list(OUTPUT_FORMATS),
            "max_upload_bytes": request.app.state.max_upload_bytes}


@router.post("/api/uploads")
async def upload(request: Request, name: str):
    """The request body is the file's bytes. The size limit holds while the body streams in: past it the partial
    file is deleted and the answer is 413."""
    jobs: JobQueue = request.app.state.jobs
    limit = request.app.state.max_upload_bytes
    too_large = HTTPException(413, f"{name}: the file is larger than the upload limit of {limit / 2**20:g} MB "
                                   "(start the server with a larger --max-upload-mb)")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    upload_id, path = jobs.new_upload(name)
    size = 0
    try:
        with open(path, "wb") as out:
            async for piece in request.stream():
                size += len(piece)
                if size > limit:
                    raise too_large
                out.write(piece)
        if size == 0:
            raise HTTPException(400, f"{name}: the file is empty")
    except BaseException:  # over the limit, empty, or the client went away: nothing stays behind
        jobs.drop_upload(upload_id)
        raise
    return {"upload": upload_id, "name": path.name, "bytes": size}


@router.post("/api/jobs")
def submit(request: Request, job_request: JobRequest):
    jobs: JobQueue = request.app.state.jobs
    spec = ModelSpec(job_request.model, job_request.config.strip(), job_request.checkpoint.strip())
    settings = Settings(spec, job_request.device, job_request.precision, job_request.overlap, job_request.tta,
                        job_request.instrumental, job_request.output_format)
    try:
        job = jobs.submit(job_request.uploads, settings)
    except (ValueError, FileNotFoundError) as error:
        raise HTTPException(400, str(error)) from None
    return jobs.snapshot(job)


@router.get("/api/jobs")
def all_jobs(request: Request):
    jobs: JobQueue = request.app.state.jobs
    return {"jobs": [jobs.snapshot(job) for job in jobs.all_jobs()]}


def find_job(request: Request, job_id: str) -> Job:
    job = request.app.state.jobs.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id} (finished jobs are deleted when newer ones push them out)")
    return job


@router.get("/api/jobs/{job_id}")
def one_job(request: Request, job_id: str):
    return request.app.state.jobs.snapshot(find_job(request, job_id))


@router.get("/api/jobs/{job_id}/files/{path:path}")
def job_file(request: Request, job_id: str, path: str):
    job = find_job(request, job_id)
    folder = job.folder.resolve()
    target = (folder / path).resolve()
    if not target.is_relative_to(folder) or not target.is_file() or target.suffix == ".part":
        raise HTTPException(404, f"no file {path} in job {job_id}")
    return FileResponse(target)


@router.get("/api/jobs/{job_id}/zip")
def job_zip(request: Request, job_id: str):
    job = find_job(request, job_id)
    if job.state not in ("done", "failed") or not any(task.stems for task in job.files):
        raise HTTPException(409, f"job {job_id} has no stems to download yet")
    return FileResponse(request.app.state.jobs.zip_path(job), filename=f"stems-{job_id}.zip")


@asynccontextmanager
async def lifespan(app: FastAPI):
    yield
    app.state.jobs.close()  # here, not after uvicorn.run: on SIGTERM uvicorn re-raises the signal, which kills at once


def create_app(jobs: JobQueue, max_upload_bytes: int) -> FastAPI:
    """The app over `jobs`; the server's shutdown closes the queue and deletes its working folder."""
    app = FastAPI(title="bs-roformer", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.jobs, app.state.max_upload_bytes = jobs, max_upload_bytes
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
