"""Regenerate `src/bs_roformer/pretrained/registry.json` and `configs/<id>.yaml` from the public sources.

Inputs (no network needed once they are on disk):

    pip download --no-deps splifft==0.0.9 -d /tmp/splifft
    pip download --no-deps audio-separator==0.47.1 -d /tmp/audio-separator
    git clone https://github.com/ZFTurbo/Music-Source-Separation-Training /tmp/msst   # or a bare mirror
    PYTHONPATH=src python scripts/build_registry.py --splifft /tmp/splifft/splifft-0.0.9-py3-none-any.whl \\
        --audio-separator /tmp/audio-separator/audio_separator-0.47.1-py3-none-any.whl --msst /tmp/msst

What each source gives:
- splifft's `data/registry.json`: ids, authors, dates, stems, checkpoint URLs with sha256 and file size, scores;
  its `data/config/<config_id>.json` (its own schema) is converted to an MSST YAML (`splifft_to_msst`).
- MSST's `docs/pretrained_models.md`: its model tables (URLs, scores); the YAMLs kept in MSST's `configs/` folder
  (viperx, Kim) are shipped as they are, which takes precedence over a converted one.
- audio-separator's `models.json` (file names only) and `models-scores.json` (MUSDB18-HQ medians): scores for the
  entries whose file name matches; the others are listed as unsupported.

Whether an entry is supported is decided by trying: its YAML must build with this package (parameters on the meta
device) with the stated stems, and its tensors must fit the recorded file size. Re-running this script after the
model gains an option flips the entries that needed it.
"""

import argparse
import json
import math
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

from bs_roformer.config import _ConfigLoader, stem_names
from bs_roformer.pretrained import FORMAT, ROFORMER_ARCHITECTURES, entry_problems, size_problem, state_shapes

OUT = Path(__file__).resolve().parents[1] / "src" / "bs_roformer" / "pretrained"
# MSST added `zero_dc` (default True) to both models on 2025-09-23; checkpoints trained before were trained without it.
ZERO_DC_ADDED = "2025-09-23"
KNOWN_OLD_AUTHORS = ("viperx", "kimberley jensen", "kimberleyjensen")  # trained in 2024, before zero_dc
ARCHITECTURES = {"bs_roformer": "bs_roformer", "mel_roformer": "mel_band_roformer"}
ID_ARCH = {"bs_roformer": "bs", "mel_band_roformer": "mel", "bs_conformer": "bs-conformer",
           "mel_band_conformer": "mel-conformer"}
NO_DIRECT_DOWNLOAD = ("drive.google.com", "mega.nz", "disk.yandex.ru")
# splifft keys written elsewhere in the YAML (chunk_size, stems, bands, head), implied by the architecture
# (norm_output), or choosing only splifft's numerics and training behaviour (its fp16 guards: RMSNorm eps, rotary and
# residual dtypes); MSST's model has none of the latter
SPLIFFT_DROPPED = ("chunk_size", "output_stem_names", "band_config", "norm_output", "use_torch_checkpoint",
                   "rms_norm_eps", "rotary_embed_dtype", "transformer_residual_dtype", "debug", "mask_estimator",
                   "ff_mult")


# ---------- reading the inputs ----------

def read_wheel_json(wheel: Path, member: str):
    with zipfile.ZipFile(wheel) as archive:
        return json.loads(archive.read(member))


def wheel_members(wheel: Path, prefix: str) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as archive:
        return {name: archive.read(name) for name in archive.namelist() if name.startswith(prefix)}


def read_repo_file(repo: Path, path: str) -> str | None:
    if (repo / path).is_file():
        return (repo / path).read_text()
    git_dir = repo / ".git" if (repo / ".git").exists() else repo
    result = subprocess.run(["git", "--git-dir", str(git_dir), "show", f"HEAD:{path}"], capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else None


def file_name(url: str) -> str:
    return url.split("?")[0].rstrip("/").rsplit("/", 1)[-1]


def direct_url(url: str) -> str:
    # Hugging Face serves a file's bytes at /resolve/; /blob/ is its HTML page
    return url.replace("/blob/", "/resolve/", 1) if url.startswith("https://huggingface.co/") else url


def home_page(url: str) -> str | None:
    match = re.match(r"https://(huggingface\.co|github\.com)/([^/]+)/([^/]+)", url)
    return f"https://{match.group(1)}/{match.group(2)}/{match.group(3)}" if match else None


# ---------- splifft ----------

def splifft_id(key: str, architecture: str) -> str:
    arch, author, name = key.split("-", 2)
    return f"{author}-{ID_ARCH.get(architecture, arch)}-{name}".lower().replace("_", "-")


def display_name(key: str, architecture: str) -> str:
    arch, author, name = key.split("-", 2)
    title = {"bs_roformer": "BS-RoFormer", "mel_band_roformer": "Mel-Band RoFormer"}.get(architecture, architecture)
    return f"{title} {name.replace('_', ' ')} by {author}"


def splifft_scores(metrics: list) -> list[dict]:
    scores = []
    for metric in metrics or []:
        source = metric.get("source")
        if source and "mvsep.com/quality_checker" in source:
            label = f"MVSEP multisong ({source})"
        else:
            label = "splifft 0.0.9 registry" + (f" ({source})" if source else " (source not stated)")
        for stem, values in (metric.get("values") or {}).items():
            for name, value in values.items():
                if isinstance(value, (int, float)):
                    scores.append(dict(stem=stem, metric=name.lower(), value=value, source=label))
    return scores


def splifft_to_msst(config: dict, architecture: str, stems: list[str]) -> dict:
    """An MSST YAML (as a dict) from a splifft config. splifft's `mask_estimator_depth` counts Linear layers in both
    models (default 2); MSST's counts Linear layers for BS but hidden layers for Mel, so Mel's is splifft's minus 1.
    splifft's defaults are written out (BS time/freq depth 1, where the model's constructor defaults to 2)."""
    source = config["model"]
    model = dict(
        dim=source["dim"], depth=source["depth"], stereo=source.get("stereo", True), num_stems=len(stems),
        time_transformer_depth=source.get("time_transformer_depth", 1),
        freq_transformer_depth=source.get("freq_transformer_depth", 1),
        linear_transformer_depth=source.get("linear_transformer_depth", 0),
        dim_head=source.get("dim_head", 64), heads=source.get("heads", 8),
        attn_dropout=source.get("attn_dropout", 0.0), ff_dropout=source.get("ff_dropout", 0.0),
        flash_attn=source.get("flash_attn", True),
        mlp_expansion_factor=source.get("mlp_expansion_factor", 4),
        skip_connection=source.get("skip_connection", False),
    )
    depth = source.get("mask_estimator_depth", 2)
    model["mask_estimator_depth"] = depth - 1 if architecture == "mel_band_roformer" else depth
    transform = config.get("transform") or {}
    bands = source["band_config"]
    model["stft_n_fft"] = bands.get("stft_n_fft", transform.get("n_fft", 2048))
    model["stft_hop_length"] = source.get("stft_hop_length", transform.get("hop_length", 512))
    model["stft_win_length"] = transform.get("win_length", model["stft_n_fft"])
    model["stft_normalized"] = transform.get("normalized", False)
    sample_rate = 44100
    if architecture == "mel_band_roformer":
        model["num_bands"] = bands.get("num_bands", 60)
        sample_rate = model["sample_rate"] = bands.get("sample_rate", 44100)
    elif "freqs_per_bands" in bands:
        model["freqs_per_bands"] = list(bands["freqs_per_bands"])
    head = dict(source.get("mask_estimator") or {"kind": "baseline"})
    if head.get("kind", "baseline") != "baseline":
        model["mask_estimator"] = head  # splifft's form, which the model option takes as it is
    for key, value in source.items():  # anything else splifft records is kept, so that the build can judge it
        if key not in model and key not in SPLIFFT_DROPPED and key not in ("mask_estimator_depth", "stereo"):
            model[key] = value
    overlap = (config.get("waveform_chunking") or {}).get("overlap_ratio", 0.5)
    inference = dict(batch_size=(config.get("inference") or {}).get("batch_size", 1),
                     num_overlap=max(1, round(1 / (1 - overlap))) if overlap < 1 else 1,
                     chunk_size=source["chunk_size"])
    if (config.get("normalization") or {}).get("enabled"):
        inference["normalize"] = True  # MSST's key for separating the loudness-normalised mix
    training = dict(model_type=architecture, instruments=list(stems))
    if len(stems) == 1:
        training["target_instrument"] = stems[0]
    return dict(
        audio=dict(chunk_size=source["chunk_size"], sample_rate=sample_rate, num_channels=2 if model["stereo"] else 1),
        model=model,
        training=training,
        inference=inference,
    )


def read_splifft(wheel: Path) -> list[dict]:
    registry = read_wheel_json(wheel, "splifft/data/registry.json")
    configs = {Path(name).name.removeprefix(".").removesuffix(".json"): (Path(name).name.startswith("."), data)
               for name, data in wheel_members(wheel, "splifft/data/config/").items() if name.endswith(".json")}
    records = []
    for key, entry in registry.items():
        architecture = ARCHITECTURES.get(entry["architecture"], entry["architecture"])
        checkpoints = [resource for resource in entry["resources"] if resource["kind"] == "model_ckpt"]
        created = (entry.get("created_at") or "")[:10] or None
        description = " ".join(" ".join(part.get("content", [])) for part in entry.get("description") or []) or None
        record = dict(
            id=splifft_id(key, architecture), name=display_name(key, architecture), architecture=architecture, stems=list(entry["output"]),
            target=entry["output"][0] if len(entry["output"]) == 1 else None,
            checkpoint=dict(file=file_name(checkpoints[0]["url"]) if checkpoints else "",
                            urls=[direct_url(resource["url"]) for resource in checkpoints[:1]],
                            sha256=(checkpoints[0].get("digest") or "").removeprefix("sha256:") or None
                            if checkpoints else None,
                            size=entry.get("model_size") if len(checkpoints) == 1 else None),
            scores=splifft_scores(entry.get("metrics")), authors=list(entry["authors"]),
            home=home_page(checkpoints[0]["url"]) if checkpoints else None, license=None, created=created,
            description=description, origin=[f"splifft 0.0.9: {key}"], unsupported=None,
        )
        if len(checkpoints) > 1:
            record["unsupported"] = f"split into {len(checkpoints)} checkpoint files"
        config_id = (entry.get("config_id") or "").removeprefix(".")
        msst_config = next((resource["url"] for resource in entry["resources"] if resource["kind"] == "config_msst"),
                           None)
        record["_msst_config_url"] = msst_config
        if config_id in configs:
            hidden, data = configs[config_id]
            if hidden:  # splifft keeps drafts under dot-names and does not load them
                record["unsupported"] = record["unsupported"] or "config is a draft in splifft (its layout is unknown)"
            elif architecture in ROFORMER_ARCHITECTURES:
                record["_config"] = splifft_to_msst(json.loads(data), architecture, record["stems"])
                record["_config_origin"] = f"converted from splifft 0.0.9 data/config/{config_id}.json"
        records.append(record)
    return records


# ---------- MSST ----------

def parse_msst_scores(text: str, table: str, instruments: str) -> list[dict]:
    scores = []
    for segment in text.split("<br>"):
        if "MUSDB" in segment:
            source = "MUSDB18-HQ test (MSST pretrained_models.md)"
        elif "Multisong" in segment or table == "Vocal models":
            source = "MVSEP multisong (MSST pretrained_models.md)"
        else:
            source = "MSST pretrained_models.md (dataset not stated)"
        pairs = re.findall(r"([a-z_-]+):\s*([0-9.]+)", segment.replace("SDR ", ""))
        if not pairs and (match := re.search(r"SDR:\s*([0-9.]+)", segment)):
            pairs = [(instruments.split("/")[0].strip(), match.group(1))]
        for stem, value in pairs:
            if stem not in ("avg",):
                scores.append(dict(stem=stem, metric="sdr", value=float(value), source=source))
    return scores


def read_msst_table(markdown: str) -> list[dict]:
    rows, table = [], None
    for line in markdown.splitlines():
        if line.startswith("### "):
            table = line[4:].strip()
        if not line.startswith("|") or "[Weights]" not in line:
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        weights = re.search(r"\[Weights\]\((\S+?)\)", line).group(1)
        config = re.search(r"\[Config\]\((\S+?)\)", line)
        instruments = cells[1] if len(cells) == 5 else "bass / drums / vocals / other"
        metrics = cells[2] if len(cells) == 5 else cells[1]
        author = re.search(r"\[([^\]]+)\]\(https://github\.com/", cells[0])
        rows.append(dict(kind=re.sub(r"\(.*", "", cells[0]).strip(), table=table, weights=direct_url(weights),
                         config=config.group(1) if config else None, instruments=instruments,
                         scores=parse_msst_scores(metrics, table, instruments),
                         author=author.group(1) if author else "ZFTurbo"))
    return rows


def msst_architecture(kind: str) -> str:
    lowered = kind.lower()
    for family in ("roformer", "conformer"):
        if family in lowered:
            return ("mel_band_" if "mel" in lowered else "bs_") + family
    return re.sub(r"[^a-z0-9]+", "_", " ".join(lowered.split()[:2])).strip("_")


def msst_id(row: dict, architecture: str) -> str:
    stem = Path(file_name(row["weights"])).stem.lower()
    sdr = re.search(r"sdr_(\d+)\.(\d\d)", stem)
    words = [word for word in re.split(r"[_\-.]+", re.sub(r"sdr_[\d.]+|ep_\d+", "", stem))
             if word and word not in ("model", "mel", "band", "roformer", "bs", "ckpt", "by", row["author"].lower())]
    name = "-".join(words[:3] + ([sdr.group(1) + sdr.group(2)] if sdr else []))
    return f"{row['author'].lower()}-{ID_ARCH.get(architecture, architecture.replace('_', '-'))}-{name}"


def msst_yaml(repo: Path, url: str | None) -> dict | None:
    """The config when MSST keeps it in its own repository (raw.githubusercontent.com/.../main/configs/...)."""
    prefix = "https://raw.githubusercontent.com/ZFTurbo/Music-Source-Separation-Training/main/"
    if not url or not url.startswith(prefix):
        return None
    text = read_repo_file(repo, url.removeprefix(prefix))
    return yaml.load(text, Loader=_ConfigLoader) if text else None


def merge_msst(records: list[dict], repo: Path):
    by_file = {record["checkpoint"]["file"]: record for record in records if record["checkpoint"]["file"]}
    markdown = read_repo_file(repo, "docs/pretrained_models.md")
    for row in read_msst_table(markdown):
        architecture = msst_architecture(row["kind"])
        record = by_file.get(file_name(row["weights"]))
        if record is None:
            stems = [stem.strip() for stem in row["instruments"].split("/")]
            record = dict(
                id=msst_id(row, architecture), name=f"{row['kind']} ({row['author']})", architecture=architecture,
                stems=stems[:1] if row["table"] == "Single stem models" else stems,
                target=stems[0] if row["table"] in ("Vocal models", "Single stem models") else None,
                checkpoint=dict(file=file_name(row["weights"]), urls=[row["weights"]], sha256=None, size=None),
                scores=[], authors=[row["author"]], home=home_page(row["weights"]), license=None, created=None,
                description=None, origin=[], unsupported=None, _msst_config_url=row["config"],
            )
            if record["target"] and row["table"] == "Vocal models":
                record["stems"] = [record["target"]]
            records.append(record)
            by_file[record["checkpoint"]["file"]] = record
        elif row["weights"] not in record["checkpoint"]["urls"]:
            record["checkpoint"]["urls"].append(row["weights"])
        record["origin"].append(f"MSST docs/pretrained_models.md: {row['table']}")
        record["scores"] += [score for score in row["scores"] if score not in record["scores"]]
        record["_msst_config_url"] = row["config"] or record.get("_msst_config_url")
    for record in records:
        use_msst_yaml(record, repo)


def use_msst_yaml(record: dict, repo: Path):
    """Ship MSST's own YAML when MSST keeps it in its repository; its stems are the ones the checkpoint has."""
    config = msst_yaml(repo, record.get("_msst_config_url"))
    if config is not None and record["architecture"] in ROFORMER_ARCHITECTURES:
        record["_config"] = config
        record["_config_origin"] = f"MSST {record['_msst_config_url'].split('/main/')[-1]}"
        record["stems"] = stem_names(config)
        record["target"] = record["stems"][0] if len(record["stems"]) == 1 else None


# ---------- audio-separator ----------

def merge_audio_separator(records: list[dict], wheel: Path):
    models = read_wheel_json(wheel, "audio_separator/models.json")["roformer_download_list"]
    scores = read_wheel_json(wheel, "audio_separator/models-scores.json")
    by_file = {record["checkpoint"]["file"]: record for record in records if record["checkpoint"]["file"]}
    for title, files in models.items():
        checkpoint = next(iter(files))
        measured = scores.get(checkpoint, {})
        tracks = len(measured.get("track_scores") or [])
        found = [dict(stem=stem.lower(), metric="sdr", value=values["SDR"],
                      source=f"MUSDB18-HQ, median museval SDR over {tracks} tracks (audio-separator 0.47.1 "
                             "models-scores.json)")
                 for stem, values in (measured.get("median_scores") or {}).items()
                 if isinstance(values, dict) and "SDR" in values and tracks]
        record = by_file.get(checkpoint)
        if record is None:
            stems = [stem.lower() for stem in measured.get("stems") or []]
            target = (measured.get("target_stem") or "").lower() or None
            name = title.removeprefix("Roformer Model: ")
            architecture = "bs_roformer" if re.search(r"\bBS\b|bs_roformer", name + checkpoint) else "mel_band_roformer"
            record = dict(
                id="as-" + re.sub(r"[^a-z0-9.]+", "-", Path(checkpoint).stem.lower()).strip("-"), name=name,
                architecture=architecture, stems=stems or ([target] if target else []),
                target=target if target in stems else None,
                checkpoint=dict(file=checkpoint, urls=[], sha256=None, size=None), scores=[], authors=[],
                home=None, license=None, created=None, description=None, origin=[],
                unsupported="no URL or config in the build inputs (audio-separator names the file only)",
            )
            records.append(record)
            by_file[checkpoint] = record
        record["origin"].append(f"audio-separator 0.47.1: {checkpoint}")
        record["scores"] += [score for score in found if score not in record["scores"]]


# ---------- deciding and writing ----------

def plain(value):
    """Tuples (from `!!python/tuple`) as lists, so that the YAML written is plain."""
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


def trained_before_zero_dc(record: dict) -> bool:
    if record["created"]:
        return record["created"] < ZERO_DC_ADDED
    return any(author.lower() in KNOWN_OLD_AUTHORS for author in record["authors"])


def judge(record: dict) -> str | None:
    """Why this package cannot run the entry, or None. Tries the YAML with this package's model."""
    checkpoint = record["checkpoint"]
    if record["unsupported"]:
        return record["unsupported"]
    if record["architecture"] not in ROFORMER_ARCHITECTURES:
        return f"not a Roformer ({record['architecture']})"
    if not checkpoint["urls"]:
        return "no checkpoint URL in the build inputs"
    host = checkpoint["urls"][0].split("/")[2]
    if host in NO_DIRECT_DOWNLOAD:
        return f"checkpoint on {host}: no direct download link"
    if "_config" not in record:
        return "no config in the build inputs (its YAML is a release asset or on a model page)"
    config = record["_config"]
    try:
        shapes = state_shapes(config)
    except (TypeError, ValueError) as error:
        match = re.search(r"unknown model option model\.(\w+) \(= (.*)\) for", str(error))
        if match:
            key, value = match.groups()
            return f"needs model option {key}" if value == "True" else \
                f"needs model option {key}={value.strip(chr(39))}"
        model_type = (config.get("training") or {}).get("model_type")
        if model_type and "is not supported" in str(error):
            return f"model type {model_type}"
        return f"config does not build: {error}"
    if stem_names(config) != record["stems"]:
        return f"config's stems {stem_names(config)} differ from the published ones {record['stems']}"
    record["_shapes"] = shapes
    if checkpoint["size"] is not None and (problem := size_problem(shapes, checkpoint["size"])):
        return f"config does not fit the checkpoint: {problem}"
    return None


def yaml_text(record: dict) -> str:
    config = plain(record["_config"])
    notes = [f"{record['id']}: {record['name']}", f"config: {record['_config_origin']}",
             "written by scripts/build_registry.py; checkpoint " + ", ".join(record["checkpoint"]["urls"])]
    if record["architecture"] in ROFORMER_ARCHITECTURES:
        if trained_before_zero_dc(record):
            config["model"]["zero_dc"] = False
            notes.append(f"zero_dc: false: trained before MSST added zero_dc ({ZERO_DC_ADDED}), i.e. without it "
                         f"(created {record['created'] or 'in 2024, per its author'})")
        else:
            notes.append(f"zero_dc: MSST's default (true): published {record['created']}, after MSST added it")
    return "".join(f"# {note}\n" for note in notes) + yaml.safe_dump(config, sort_keys=False)


def build(args) -> dict:
    records = read_splifft(args.splifft)
    merge_msst(records, args.msst)
    merge_audio_separator(records, args.audio_separator)
    ids = [record["id"] for record in records]
    duplicates = sorted({name for name in ids if ids.count(name) > 1})
    if duplicates:
        raise SystemExit(f"ids are not unique: {duplicates}")
    configs = args.out / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    for old in configs.glob("*.yaml"):
        old.unlink()
    entries, overheads = [], []
    for record in sorted(records, key=lambda record: record["id"]):
        record["unsupported"] = judge(record)
        if "_config" in record and record["architecture"] in ROFORMER_ARCHITECTURES:
            (configs / f"{record['id']}.yaml").write_text(yaml_text(record))
            record["config"] = f"configs/{record['id']}.yaml"
        else:
            record["config"] = None
        if record["unsupported"] is None and record["checkpoint"]["size"]:
            elements = sum(math.prod(shape) for shape in record["_shapes"].values())
            width = 4 if record["checkpoint"]["size"] >= elements * 4 else 2
            overheads.append((record["checkpoint"]["size"] - elements * width, len(record["_shapes"]), record["id"]))
        entry = {key: value for key, value in record.items() if not key.startswith("_")}
        problems = entry_problems(entry)
        if problems:
            raise SystemExit("; ".join(problems))
        entries.append(entry)
    registry = dict(format=FORMAT, sources=["splifft 0.0.9", "audio-separator 0.47.1",
                                            f"MSST docs/pretrained_models.md at {args.msst_commit}"], models=entries)
    (args.out / "registry.json").write_text(json.dumps(registry, indent=1, ensure_ascii=False) + "\n")
    return dict(entries=entries, overheads=overheads)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--splifft", type=Path, required=True, help="splifft-0.0.9-py3-none-any.whl")
    parser.add_argument("--audio-separator", type=Path, required=True, help="audio_separator-0.47.1-py3-none-any.whl")
    parser.add_argument("--msst", type=Path, required=True, help="MSST repository (checkout or bare git directory)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    git_dir = args.msst / ".git" if (args.msst / ".git").exists() else args.msst
    args.msst_commit = subprocess.run(["git", "--git-dir", str(git_dir), "rev-parse", "--short", "HEAD"],
                                      capture_output=True, text=True).stdout.strip() or "unknown commit"
    result = build(args)
    entries = result["entries"]
    reasons = {}
    for entry in entries:
        if entry["unsupported"]:
            reason = re.sub(r"\(config gives.*|\d[\d,]* parameters.*", "...", entry["unsupported"])
            reasons[reason] = reasons.get(reason, 0) + 1
    supported = [entry for entry in entries if not entry["unsupported"]]
    print(f"{len(entries)} entries: {len(supported)} supported, {len(entries) - len(supported)} unsupported; "
          f"{sum(bool(entry['checkpoint']['sha256']) for entry in entries)} with a sha256 "
          f"({sum(bool(entry['checkpoint']['sha256']) for entry in supported)} of the supported)")
    for reason, count in sorted(reasons.items(), key=lambda item: -item[1]):
        print(f"  {count:3d}  {reason}")
    if result["overheads"]:
        worst = max(result["overheads"], key=lambda item: item[0] / item[1])
        print(f"file size minus tensor bytes: {min(o[0] for o in result['overheads']):,} to "
              f"{max(o[0] for o in result['overheads']):,} bytes; most per tensor: {worst[0] / worst[1]:.0f} "
              f"bytes ({worst[2]})")


if __name__ == "__main__":
    sys.exit(main())
