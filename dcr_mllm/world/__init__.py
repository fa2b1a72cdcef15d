"""A tiny world where DCR's premise can be checked on a laptop.

Scenes with ground-truth attributes (``scenes``), a base CLIP trained to be blind to the fine
ones and a denoiser trained to know them (``models``, presets ``world-clip`` / ``world-sd``),
tower metrics (``metrics``), a check of how the denoiser responds to DCR's conditioning
(``diagnose``) and the paper's ablation (``ablation``, ``stages/ablation.sh``).
"""
