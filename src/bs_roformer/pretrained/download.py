"""Downloading one file: redirects followed, retries with back-off, resumed with HTTP Range, sha256-checked.

The invariant: a file reaches its final name only complete and (when a digest is known) verified. Bytes arrive in
`<name>.part`; an interrupted transfer leaves the `.part` file, and the next attempt (in this call or a later one)
asks for the rest with `Range: bytes=<have>-`. A server that ignores Range (answers 200) sends the whole file again,
which replaces the partial one.
"""

import hashlib
import os
import time
from pathlib import Path

BLOCK = 1 << 16  # a read cut off mid-block loses that block, so blocks stay small
ATTEMPTS = 5  # transfers per URL, each resuming where the last one stopped
BACKOFF_SECONDS = 1.0  # wait before attempt k (k >= 1): BACKOFF_SECONDS * 2 ** (k - 1)
TIMEOUT_SECONDS = (15, 60)  # connect, read (between bytes)


class DownloadError(OSError):
    """A file could not be fetched or did not verify; the message names the file, the URL and what to do.

    An OSError, as a failed transfer is; the command line reports it in one line."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _session():
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    # urllib3 retries connection failures and 429/5xx answers (with back-off, honouring Retry-After);
    # failures in the middle of a body are resumed by `download` itself.
    retry = Retry(total=4, backoff_factor=BACKOFF_SECONDS, status_forcelist=(429, 500, 502, 503, 504),
                  allowed_methods=("GET",), raise_on_status=False)
    session = requests.Session()
    session.mount("https://", HTTPAdapter(max_retries=retry))
    session.mount("http://", HTTPAdapter(max_retries=retry))
    session.headers["User-Agent"] = "bs-roformer"
    return session


def _transfer(session, url: str, part: Path, progress: bool, label: str) -> int | None:
    """Append the rest of `url` to `part`; return the total size the server announced (None if it did not)."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with session.get(url, headers=headers, stream=True, timeout=TIMEOUT_SECONDS, allow_redirects=True) as response:
        if response.status_code == 416 and have:  # nothing left to send: the part file is already whole (or bad)
            return have
        if response.status_code not in (200, 206):
            raise DownloadError(f"{label}: {url} answered HTTP {response.status_code} {response.reason}")
        resumed = response.status_code == 206
        length = response.headers.get("Content-Length")
        total = (have if resumed else 0) + int(length) if length is not None else None
        from tqdm import tqdm

        with open(part, "ab" if resumed else "wb") as file, tqdm(
            total=total, initial=have if resumed else 0, unit="B", unit_scale=True, unit_divisor=1024,
            desc=label, disable=not progress, leave=False,
        ) as bar:
            for block in response.iter_content(BLOCK):
                file.write(block)
                bar.update(len(block))
    return total


def download_file(urls: list[str], destination: str | Path, *, sha256: str | None = None, size: int | None = None,
             progress: bool = True, label: str | None = None) -> Path:
    """Fetch the first of `urls` that works into `destination` (resuming `destination.part`), check its size and
    sha256 when known, and rename it into place. A file that fails the check is removed."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    part = destination.with_name(destination.name + ".part")
    label = label or destination.name
    import requests  # here, so that importing this module (for DownloadError) stays cheap

    session = _session()
    problems = []
    for url in urls:
        for attempt in range(ATTEMPTS):
            if attempt:
                time.sleep(BACKOFF_SECONDS * 2 ** (attempt - 1))
            try:
                total = _transfer(session, url, part, progress, label)
            except DownloadError as error:  # an HTTP error answer: this URL will not serve the file
                problems.append(str(error))
                break
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as error:
                problems.append(f"{label}: {url}: {type(error).__name__}: {error}")
                continue  # cut off: resume from what arrived
            have = part.stat().st_size
            if total is not None and have < total:
                problems.append(f"{label}: {url} ended after {have} of {total} bytes")
                continue
            return _verify_and_place(part, destination, sha256, size, url)
    raise DownloadError("; ".join(problems[-3:]) + f" (the partial download, if any, is kept in {part} "
                        "and resumed by the next try)")


def _verify_and_place(part: Path, destination: Path, sha256: str | None, size: int | None, url: str) -> Path:
    have = part.stat().st_size
    if size is not None and have != size:
        part.unlink()
        raise DownloadError(f"{destination.name} from {url} has {have} bytes, the registry says {size}; "
                            "the file was removed")
    if sha256 is not None:
        actual = sha256_of(part)
        if actual != sha256:
            part.unlink()
            raise DownloadError(f"sha256 of {destination.name} from {url} is {actual}, the registry says {sha256}; "
                                "the file was removed (a changed upload or a corrupted transfer)")
    os.replace(part, destination)
    return destination
