"""Named ensembles of published models for common goals (`bs-roformer separate --preset NAME`).

Each preset names registry ids (supported ones, all giving `stem`), the ensemble algorithm (see `ensemble.py`) and
optionally weights. The members were picked by their published scores (in the registry, shown by
`bs-roformer models --presets`): bleedless for the "clean" presets with min_spec (a bin is kept only as loud as
the quietest member hears it), fullness for the "full" ones with max_spec, SDR for the balanced ones with mean.
No torch here: `bs-roformer models` lists them at once.
"""

PRESETS = {
    "vocals-clean": {
        "goal": "vocals with the least bleed",
        "stem": "vocals", "algorithm": "min_spec",
        "models": ["unwa-bs-revive2", "unwa-bs-resurrection-vocals", "unwa-mel-kim-ft2-bleedless"],
    },
    "vocals-full": {
        "goal": "the fullest vocals (more bleed)",
        "stem": "vocals", "algorithm": "max_spec",
        "models": ["gabox-mel-voc-fv6", "anvuew-bs-voc-mag", "unwa-bs-revive3e"],
    },
    "vocals-balanced": {
        "goal": "vocals by SDR",
        "stem": "vocals", "algorithm": "mean",
        "models": ["unwa-bs-resurrection-vocals", "unwa-mel-big-beta6x", "kim-mel-vocals"],
    },
    "instrumental-clean": {
        "goal": "instrumentals with the least vocal bleed",
        "stem": "instrum", "algorithm": "min_spec",
        "models": ["gabox-mel-inst-fv7b", "gabox-mel-inst-gaboxfv7z", "gabox-mel-inst-gaboxbv3"],
    },
    "instrumental-full": {
        "goal": "the fullest instrumentals",
        "stem": "instrum", "algorithm": "max_spec",
        "models": ["gabox-mel-instv6n", "gabox-mel-instv5", "gabox-mel-inst-gaboxfv3"],
    },
    "instrumental-balanced": {
        "goal": "instrumentals by SDR",
        "stem": "instrum", "algorithm": "mean",
        "models": ["unwa-bs-resurrection-instrumental", "gabox-mel-flowers-v10", "unwa-mel-v2"],
        "weights": [2, 1, 1],
    },
    "karaoke": {
        "goal": "lead vocals apart from the backing vocals",
        "stem": "lead_vocals", "algorithm": "mean",
        "models": ["aufr33-mel-karaoke", "gabox-mel-kar-v2", "anvuew-bs-karaoke"],
    },
}


def get_preset(name: str) -> dict:
    if name not in PRESETS:
        raise ValueError(f"no preset named {name!r}: use one of {', '.join(PRESETS)} (`bs-roformer models --presets`)")
    return PRESETS[name]


def presets_table() -> str:
    """Each preset: its goal, algorithm and weights, then its models with their headline published score."""
    from .pretrained import headline_score, load_registry

    registry = load_registry()
    lines = []
    for name, preset in PRESETS.items():
        weights = f", weights {','.join(map(str, preset['weights']))}" if preset.get("weights") else ""
        lines.append(f"{name}: {preset['goal']} ({preset['stem']}; {preset['algorithm']}{weights})")
        for model_id in preset["models"]:
            entry = registry.get(model_id)
            scores = "; ".join(f"{score['metric']} {score['value']:g} ({score['source'].split(' (')[0]})"
                               for score in entry["scores"] if score["stem"] == preset["stem"]) if entry else ""
            lines.append(f"  {model_id}  {scores or (headline_score(entry) if entry else 'not in the registry')}")
    lines.append(f"{len(PRESETS)} presets: bs-roformer separate SONG --preset NAME")
    return "\n".join(lines)
