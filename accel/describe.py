"""``--dry-run``: the resolved configuration of a run and a per-layer table of its initial masks
(layer, shape, weights, density, kept, sparsity), without training anything."""
from __future__ import annotations

from twinsparse.reference.config import RunConfig, run_to_dict
from twinsparse.reference.config_checks import check_mask_updates


def describe_run(cfg: RunConfig) -> str:
    """The resolved config and a per-layer table of the initial masks (layer, shape, weights,
    density, kept, sparsity); builds the model but trains nothing."""
    import json as _json

    from .data import data_info
    from .prunable import discover_prunable
    from .train import build_model_for, density_spec

    check_mask_updates(cfg)
    split_in, n_classes = data_info(cfg)
    model = build_model_for(cfg, split_in, n_classes)
    params = discover_prunable(model, cfg.include or None, cfg.exclude or None)
    weights = {n: p.detach() for n, p in params.items()}
    spec = density_spec(cfg)
    dens = {n: 1.0 for n in weights} if spec is None else spec.resolve(weights)
    lines = [f"run {cfg.label!r} (seed {cfg.seed}):", _json.dumps(run_to_dict(cfg), sort_keys=True),
             f"{'layer':<28} {'shape':<20} {'weights':>10} {'density':>8} {'kept':>10} {'sparsity':>8}"]
    total = kept_total = 0
    for n, w in weights.items():
        kept = int(dens[n] * w.numel() + 0.5)
        total, kept_total = total + w.numel(), kept_total + kept
        lines.append(f"{n:<28} {str(tuple(w.shape)):<20} {w.numel():>10} {dens[n]:>8.4f} {kept:>10} {1 - dens[n]:>8.2%}")
    lines.append(f"{'total (prunable set)':<28} {'':<20} {total:>10} {kept_total / total:>8.4f} {kept_total:>10} "
                 f"{1 - kept_total / total:>8.2%}")
    if cfg.method == "acdc":
        lines.append(f"AC/DC phases (epochs, 0-based, end-exclusive): "
                     f"{', '.join(f'{p.name} {p.start}-{p.end}' for p in cfg.acdc_phase_plan())}; compressed phases at "
                     f"density {cfg.density} ({cfg.acdc_distribution}); the table above is the dense start"
                     + ("; procedure acdc adds a dense fine-tune of the last dense checkpoint"
                        if cfg.procedure == "acdc" else ""))
    if cfg.procedure == "cocktail":
        from twinsparse.reference.cocktail_procedure import describe
        lines.append(describe(cfg))
    if cfg.procedure == "cram":
        from twinsparse.reference.cram_options import describe_cram
        lines.append(describe_cram(cfg))
    if cfg.procedure not in ("train", "acdc", "cocktail", "cram"):
        from twinsparse.reference.d2sparse import state_densities, total_epochs
        dens = state_densities(cfg.density, cfg.d2_states, cfg.d2_schedule)
        lines.append(f"procedure {cfg.procedure}: {cfg.d2_states} state(s) at densities "
                     f"{', '.join(f'{d:.4f}' for d in dens)}; {total_epochs(cfg)} training epochs in all "
                     f"(the table above is the final state's layer distribution)")
    return "\n".join(lines)
