"""ComfyUI nodes: thin adapters over ``creward.models``. Imported only when ComfyUI is the host.

Node ids (the keys below) and their input names are a public API: saved workflows refer to them.
"""

from .explain import CREwardExplain
from .loader import CREwardLoader
from .model_folders import register_model_folders
from .plot import CREwardPlotScores
from .score import CREwardScore, CREwardScoreLatent
from .select import CREwardSelectBest

register_model_folders()

NODE_CLASS_MAPPINGS = {
    "CREwardLoader": CREwardLoader,
    "CREwardScore": CREwardScore,
    "CREwardScoreLatent": CREwardScoreLatent,
    "CREwardSelectBest": CREwardSelectBest,
    "CREwardPlotScores": CREwardPlotScores,
    "CREwardExplain": CREwardExplain,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "CREwardLoader": "CREward Loader",
    "CREwardScore": "CREward Score",
    "CREwardScoreLatent": "CREward Score Latent",
    "CREwardSelectBest": "CREward Select Best",
    "CREwardPlotScores": "CREward Plot Scores",
    "CREwardExplain": "CREward Explain (Grad-CAM)",
}
