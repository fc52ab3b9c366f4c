"""What domix prints besides its own lines: third-party reports and warnings, silenced unless verbose.

transformers prints a multi-line load report for every head it adds, datasets a progress bar for every
table it builds, and both warn about things a user of domix cannot act on (domix says what it adds, a
head or a pad token, once in its own words). ``domix --verbose`` (or ``DOMIX_VERBOSE=1``, which child
processes of ``domix compare`` inherit) shows them again.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

VERBOSE_ENV = "DOMIX_VERBOSE"
# warnings users cannot act on: PEFT calls a transformers API that warns of its own deprecation on every model it wraps
_IGNORED_WARNINGS = (".*is_gradient_checkpointing.*",)


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def set_verbose(on: bool) -> None:
    os.environ[VERBOSE_ENV] = "1" if on else "0"
    quiet_third_party()


def quiet_third_party() -> None:
    """Silence transformers', PEFT's and datasets' info output and progress bars unless verbose."""
    for message in _IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)
    if verbose():
        return
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(transformers|peft|torch\.utils\.checkpoint)\b")
    logging.getLogger("accelerate").setLevel(logging.ERROR)
    if "datasets" not in sys.modules:  # not imported here: pyarrow and pandas cost a second and much memory
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # read when datasets is imported
        os.environ.setdefault("DATASETS_VERBOSITY", "error")
        return
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
