"""Pictures of what a trained tnt checkpoint computes: reports built on `model/` hooks and `decomp/`.

Command lines (parsers and mains in `analysis.commands`):
    python -m analysis CHECKPOINT --out DIR          per-layer spectra, CP-rank sweep with KL faithfulness,
                                                     logit lens, steering (writes DIR/index.html)
    python -m analysis.diff BASE FINETUNED --out DIR weight-based and activation-based model diffing
    python -m analysis.lab BASE FT [FT ...] --fact DIR --out DIR
                                                     the model-diffing lab: several finetunes of one base on a
                                                     planted fact (``python -m data falsefact``): fact margin vs
                                                     disturbance, orders of the weight diffs, activation diffs,
                                                     steering with the difference

Modules: checkpoint (load a run / checkpoint folder), tokens (decode and display token text), valdata
(validation windows in model ids), kl (KL divergence and reference logits), faithfulness (MLP replacements
scored by KL against a noise floor), spectra (interaction-matrix eigenvalues and token readouts), logit_lens,
steering, model_diff (weight and activation diffs), diff_steering (steering with a finetune's difference), lab
and lab_report (the model-diffing lab), activations (the cached activation pass), dashboards (top-activating
contexts), truncation (data-weighted truncation), composition (two stacked layers), readable (the stages and
sections that tie components to data), plots (matplotlib figures), html (the report page), report / diff
(build the reports), commands (every command line), cli (argparse helpers).
"""

from analysis.errors import AnalysisError

__all__ = ["AnalysisError"]
