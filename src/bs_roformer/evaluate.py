"""Scoring separations of whole test sets: per track and stem, the summary tables report, JSON, CSV and a plot.

Test sets use the MUSDB18-HQ layout: one folder per track holding `<stem>.wav` (or `.flac`), and optionally
`mixture.wav`. Estimates use the layout `bs-roformer separate` writes: `<folder>/<track>/<stem>.<ext>`.
"""

import csv
import json
import math
import statistics
from pathlib import Path

import torch
from tqdm import tqdm

from .audio import fit_length
from .data.layout import mixture_of, read_stems, track_folders
from .metrics import bleedless_fullness, framewise_sdr, global_sdr, si_sdr

METRICS = ("sdr", "csdr", "si_sdr", "bleedless", "fullness")


def score_track(references: dict[str, torch.Tensor], estimates: dict[str, torch.Tensor], sample_rate: int,
                problems: list[str], track: str) -> dict[str, dict[str, float]]:
    """{stem: {metric: value}} for the stems present in both; NaN where a metric is undefined (silent reference).
    Differences in length are resolved as museval does (estimates cut or zero-padded), with a note in `problems`."""
    stems = [stem for stem in references if stem != "mixture" and stem in estimates]
    if not stems:
        return {}
    length = references[stems[0]].shape[-1]
    aligned = {}
    for stem in stems:
        reference, estimate = references[stem], estimates[stem]
        if estimate.shape[0] != reference.shape[0]:
            problems.append(f"{track}/{stem}: estimate has {estimate.shape[0]} channels, reference "
                            f"{reference.shape[0]}; skipped")
            continue
        if estimate.shape[-1] != length:
            problems.append(f"{track}/{stem}: estimate has {estimate.shape[-1]} samples, reference {length}; "
                            "cut or zero-padded to the reference")
            estimate = fit_length(estimate, length)
        aligned[stem] = (reference, estimate)
    if not aligned:
        return {}
    references_stack = torch.stack([pair[0] for pair in aligned.values()])
    estimates_stack = torch.stack([pair[1] for pair in aligned.values()])
    frames = framewise_sdr(references_stack, estimates_stack, window=sample_rate, hop=sample_rate)
    scores = {}
    for index, (stem, (reference, estimate)) in enumerate(aligned.items()):
        if not reference.abs().sum():
            problems.append(f"{track}/{stem}: silent reference, SDR undefined (left out of the summary)")
            scores[stem] = {metric: math.nan for metric in METRICS}
            continue
        defined = frames[index][~torch.isnan(frames[index])]  # museval leaves silent frames out of the median
        bleedless, fullness = bleedless_fullness(reference, estimate, sample_rate)
        scores[stem] = {
            "sdr": global_sdr(reference, estimate).item(),
            "csdr": defined.median().item() if defined.numel() else math.nan,
            "si_sdr": si_sdr(reference, estimate).item(),
            "bleedless": bleedless.item(),
            "fullness": fullness.item(),
        }
    return scores


def summarize(results: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """{stem: {metric: {"median": m, "mean": m, "tracks": n}}} over tracks, leaving out undefined values."""
    summary = {}
    stems = sorted({stem for track in results.values() for stem in track})
    for stem in stems:
        summary[stem] = {}
        for metric in METRICS:
            values = [track[stem][metric] for track in results.values()
                      if stem in track and not math.isnan(track[stem][metric])]
            summary[stem][metric] = {
                "median": statistics.median(values) if values else math.nan,
                "mean": statistics.fmean(values) if values else math.nan,
                "tracks": len(values),
            }
    return summary


def with_instrumental_reference(references: dict[str, torch.Tensor], estimates: dict[str, torch.Tensor]) -> dict:
    """The references plus "instrumental" (the mixture minus the vocals) when there is an instrumental estimate."""
    if "instrumental" not in estimates or "vocals" not in references or "instrumental" in references:
        return references
    return {**references, "instrumental": mixture_of(references) - references["vocals"]}


def evaluate_estimates(references_dir: Path, estimates_dir: Path, progress=True):
    """Score the estimates on disk against the references (an `instrumental` estimate against the mixture minus the
    vocals); returns (results, problems). Stems without estimates are named once, not per track."""
    folders, problems = track_folders(references_dir), []
    unestimated: dict[str, list[str]] = {}  # stem: tracks without its estimate, named once at the end

    def pairs():
        for folder in folders:
            references, rate = read_stems(folder)
            estimate_folder = estimates_dir / folder.name
            if not estimate_folder.is_dir():
                problems.append(f"{folder.name}: no estimates folder {estimate_folder}")
                continue
            estimates, estimate_rate = read_stems(estimate_folder)
            if estimates and estimate_rate != rate:
                problems.append(f"{folder.name}: estimates at {estimate_rate} Hz, references at {rate} Hz; skipped")
                continue
            for stem in sorted(set(references) - set(estimates) - {"mixture"}):
                unestimated.setdefault(stem, []).append(folder.name)
            yield folder.name, with_instrumental_reference(references, estimates), estimates, rate

    results = _score_all(pairs(), len(folders), problems, progress)
    for stem, tracks in unestimated.items():
        named = ", ".join(tracks[:3]) + (f" and {len(tracks) - 3} more" if len(tracks) > 3 else "")
        problems.append(f"no estimate for stem '{stem}' in {len(tracks)} track(s): {named}")
    return results, problems


def evaluate_model(separator, data_dir: Path, progress=True):
    """Separate every track of a test set with `separator` and score it; returns (results, problems)."""
    folders, problems = track_folders(data_dir), []
    unscored = set()  # stems of the test set that the model does not estimate: one note, not one per track

    def pairs():
        for folder in folders:
            references, rate = read_stems(folder)
            unscored.update(set(references) - set(separator.stems) - {"mixture"})
            estimates = separator.separate(mixture_of(references), rate)
            yield folder.name, {stem: references[stem] for stem in estimates if stem in references}, estimates, rate

    results = _score_all(pairs(), len(folders), problems, progress)
    if unscored:
        problems.append(f"not scored, the model does not estimate them: {', '.join(sorted(unscored))}")
    return results, problems


def _score_all(pairs, total: int, problems: list[str], progress: bool):
    results = {}
    for track, references, estimates, rate in tqdm(pairs, total=total, desc="tracks", disable=not progress):
        scores = score_track(references, estimates, rate, problems, track)
        if scores:
            results[track] = scores
    return results


def format_table(results, summary) -> str:
    header = f"{'track':32} {'stem':12} " + " ".join(f"{metric:>9}" for metric in METRICS)
    lines = [header, "-" * len(header)]
    for track, stems in results.items():
        for stem, scores in stems.items():
            lines.append(f"{track[:32]:32} {stem:12} " + " ".join(f"{scores[m]:9.3f}" for m in METRICS))
    lines += ["", header.replace("track", "summary"), "-" * len(header)]
    for stem, metrics in summary.items():
        for statistic in ("median", "mean"):
            lines.append(f"{statistic:32} {stem:12} " + " ".join(f"{metrics[m][statistic]:9.3f}" for m in METRICS))
    return "\n".join(lines)


def check_outputs(json_path: Path | None, csv_path: Path | None, plot_path: Path | None):
    """Before any scoring: the report files' folders exist (made if need be) and plotting has matplotlib."""
    for path in (json_path, csv_path, plot_path):
        if path is not None:
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise ValueError(f"cannot write {path}: {error}") from None
    if plot_path is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ValueError("--plot needs matplotlib: pip install matplotlib (or leave out --plot)") from None


def _null_for_nan(value):
    if isinstance(value, dict):
        return {key: _null_for_nan(item) for key, item in value.items()}
    return None if isinstance(value, float) and math.isnan(value) else value


def write_json(path: Path, results, summary):
    """Undefined values (NaN) are written as null, so the file is strict JSON."""
    report = _null_for_nan({"summary": summary, "tracks": results})
    path.write_text(json.dumps(report, indent=2, allow_nan=False))


def write_csv(path: Path, results):
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["track", "stem", *METRICS])
        for track, stems in results.items():
            for stem, scores in stems.items():
                writer.writerow([track, stem, *(scores[m] for m in METRICS)])


def write_plot(path: Path, results):
    """Per-track global SDR per stem, one group of bars per track."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("plotting needs matplotlib: pip install matplotlib") from None
    stems = sorted({stem for track in results.values() for stem in track})
    tracks = list(results)
    figure, axes = plt.subplots(figsize=(max(6.0, 0.6 * len(tracks) * len(stems)), 4))
    width = 0.8 / max(len(stems), 1)
    for index, stem in enumerate(stems):
        values = [results[track].get(stem, {}).get("sdr", math.nan) for track in tracks]
        axes.bar([t + index * width for t in range(len(tracks))], values, width, label=stem)
    axes.set_xticks([t + 0.4 - width / 2 for t in range(len(tracks))], tracks, rotation=45, ha="right")
    axes.set_ylabel("global SDR (dB)")
    axes.legend()
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
