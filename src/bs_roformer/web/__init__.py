"""`bs-roformer web`: a local page to separate songs, listen to the stems, see their spectrograms and download them.

FastAPI + uvicorn serve a static page (static/index.html, app.js) and a small JSON API (app.py); one worker thread
runs the jobs with the same Separator as the CLI (jobs.py). Needs the `web` extra: `pip install -e ".[web]"`."""

import sys
import tempfile
from pathlib import Path

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def serve(host: str = "127.0.0.1", port: int = 7860, max_upload_mb: float = 1024):
    """Serve until interrupted; everything the server writes is in a temporary folder deleted at exit."""
    import uvicorn

    from .app import create_app
    from .jobs import JobQueue

    if host not in LOOPBACK:
        print(f"warning: listening on {host}: anyone who can reach this machine on port {port} can upload files, "
              "run models and name this machine's files as a local model (there is no login); use the default "
              "127.0.0.1 to keep it to this machine", file=sys.stderr)
    workdir = Path(tempfile.mkdtemp(prefix="bs-roformer-web-"))
    jobs = JobQueue(workdir)
    print(f"bs-roformer web: open http://{host}:{port} (uploads up to {max_upload_mb:g} MB; working folder "
          f"{workdir}, deleted at exit; Ctrl+C stops)", flush=True)
    try:
        uvicorn.run(create_app(jobs, int(max_upload_mb * 2**20)), host=host, port=port, log_level="warning")
    finally:  # the app's shutdown closes the queue; this covers a server that failed to start (port in use)
        jobs.close()
