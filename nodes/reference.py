"""``CREwardReferenceLoader``: a reference set file → ``CREWARD_REFERENCE`` for the Score, Select Best and Plot nodes.

Reference files (``*.json`` written by ``creward calibrate``) live in ``models/creward/references/``.
Connected to a Score node, every image gets its percentile (0–100) and win probability (0–1)
against the reference (``creward.models.reference_set``); Select Best can then keep "the top 10 %"
(percentile ≥ 90) or "beats 80 % of the reference".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..models.errors import CREwardError
from ..models.reference_set import ReferenceError, ReferenceSet
from ..models.score_table import ScoreTable
from . import model_folders

logger = logging.getLogger(__name__)

CATEGORY = "CREward"


@dataclass(frozen=True)
class ChosenReference:
    """The ``CREWARD_REFERENCE`` value: a reference set and the group to compare with (None: the whole set)."""

    reference: ReferenceSet
    group: str | None = None

    def calibrate(self, table: ScoreTable, scorer=None, input_name: str = "reference") -> ScoreTable:
        """``table`` with its percentiles and win probabilities against this reference.

        Raises ``CREwardError`` naming ``input_name`` when the reference was built with another head.
        """
        scorer = scorer or table.scorer
        if scorer is not None:
            try:
                self.reference.check_scorer(scorer)
            except ReferenceError as error:
                raise CREwardError(f"{input_name}: {error}") from None
        else:
            logger.warning("%s: these scores do not say which head made them; the reference's head is not checked", input_name)
        return table.with_calibration(self.reference.calibrate(table.values, table.axes, self.group))


def _reference_file(name: str) -> str:
    path = model_folders.reference_path(name)
    if path is None:
        available = model_folders.list_references()
        raise ReferenceError(
            f"reference: {name!r} not found in {', '.join(model_folders.reference_folders())} (available: "
            f"{', '.join(available) if available else 'none; build one with `creward calibrate IMAGES -o models/creward/references/NAME.json`'})"
        )
    return path


class CREwardReferenceLoader:
    """Load a reference set (``creward calibrate``) to turn scores into percentiles and win probabilities."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "reference": (model_folders.list_references(), {
                    "tooltip": "A reference set in models/creward/references/ (a .json file written by `creward calibrate`): "
                    "the scores of images of your subject, made with the same head.",
                }),
            },
            "optional": {
                "group": ("STRING", {
                    "default": "",
                    "tooltip": "Compare with one group of the reference (e.g. a subject's folder name when it was built with "
                    "--group-by folder). Empty: the whole set. An unknown group falls back to the whole set, with a warning.",
                }),
            },
        }

    RETURN_TYPES = ("CREWARD_REFERENCE",)
    RETURN_NAMES = ("reference",)
    OUTPUT_TOOLTIPS = ("The reference set, for the 'reference' input of CREward Score, Score Latent, Select Best and Plot Scores.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Loads a CREward reference set: scores of images of your subject, built with `creward calibrate`. Connected "
        "to the scoring nodes, each image gets its percentile (0-100: the share of the reference it beats) and win "
        "probability (0-1: the chance the judge prefers it to a random reference image)."
    )
    SEARCH_ALIASES = ["percentile", "calibrate scores", "reference set"]

    @classmethod
    def VALIDATE_INPUTS(cls, reference=None):
        # Says what is wrong with a missing or corrupt file (ComfyUI shows "reference - <message>").
        if reference is not None:
            try:
                ReferenceSet.load(_reference_file(reference))
            except ReferenceError as error:
                return str(error).removeprefix("reference: ")
        return True

    def load(self, reference, group=""):
        loaded = ReferenceSet.load(_reference_file(reference))
        group = (group or "").strip() or None
        _, used = loaded.group(group)  # a missing group warns here (and falls back to the whole set)
        logger.info("CREward reference %s: %s, %s", reference, loaded.describe(used), loaded.scorer.describe())
        return (ChosenReference(loaded, used),)
