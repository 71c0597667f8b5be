"""Quiet by default: the libraries' notices that tell a user nothing are silenced before anything loads.

`hydra.verbose=true` (Hydra's own switch) brings every library's logs and warnings back. What stays: our
one line per stage, Lightning's training bar on a terminal, warnings and errors a user can act on.
"""
from __future__ import annotations

import logging
import os
import warnings

# Loggers whose INFO lines are noise at the terminal (font cache, device banners, the litlogger tip).
_INFO_ONLY_NOISE = ("matplotlib", "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                    "lightning.pytorch.accelerators.cuda", "urllib3", "filelock", "datasets", "huggingface_hub")
# bitsandbytes warns on every CPU run that an optional `kernels` package is absent; its own CPU path works.
_WARNING_NOISE = ("bitsandbytes.backends.cpu.ops", "bitsandbytes.cextension")


def quiet_libraries(verbose: bool = False) -> None:
    if verbose:
        return
    for name in _INFO_ONLY_NOISE:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in _WARNING_NOISE:
        logging.getLogger(name).setLevel(logging.ERROR)
    # Deprecation notices are for the libraries' maintainers, not for a researcher running a preset.
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
