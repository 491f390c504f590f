"""Whether a model's classes are a dataset's: a detector predicts class *indices*, and a teacher,
or a model under evaluation, whose index i names another class than the dataset's index i scores
(or teaches) every box as the wrong class without any error. ``config.json`` records the names a
model was trained on (``PretrainedCfg.categories``); this compares them with a dataset's."""
from __future__ import annotations

import logging
from typing import Sequence

__all__ = ["check_class_order"]

_log = logging.getLogger("kdzoo.data")


def check_class_order(model_classes: Sequence[str] | None, data_classes: Sequence[str] | None,
                      model_what: str, data_what: str) -> None:
    """Raise ValueError when the two lists hold the same names in another order (certainly a mistake);
    log a warning when they hold other names (perhaps a deliberate relabelling). Nothing is checked
    when either side has no names recorded or the counts differ (the count is checked elsewhere)."""
    m, d = [str(c) for c in model_classes or ()], [str(c) for c in data_classes or ()]
    if not m or not d or len(m) != len(d) or m == d:
        return
    if sorted(n.strip().lower() for n in m) == sorted(n.strip().lower() for n in d):
        i = next(i for i, (a, b) in enumerate(zip(m, d)) if a.strip().lower() != b.strip().lower())
        raise ValueError(f"{model_what} has the classes of {data_what} in another order: its class {i} is {m[i]!r}, "
                         f"the dataset's is {d[i]!r} (model {m[:8]}, dataset {d[:8]}); every box would be read as "
                         "another class: give the dataset's categories the model's order (category ids in that order)")
    _log.warning("%s was trained on classes %s but %s has %s: the model's class i is read as the dataset's class i",
                 model_what, m[:5] + ["..."] * (len(m) > 5), data_what, d[:5] + ["..."] * (len(d) > 5))
