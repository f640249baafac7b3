"""ComfyUI nodes: thin adapters over ``creward.models``. Imported only when ComfyUI is the host.

Node ids (the keys below) and their input names are a public API: saved workflows refer to them.
"""

from .acquire_samples import CREwardAcquireSamples
from .creative_lora_apply import CREwardCreativeLoRA
from .creative_lora_train import CREwardTrainCreativeLoRA
from .explain import CREwardExplain
from .guidance import CREwardGuidance
from .loader import CREwardLoader
from .model_folders import register_model_folders
from .plot import CREwardPlotScores
from .reference import CREwardReferenceLoader
from .score import CREwardScore, CREwardScoreLatent
from .select import CREwardSelectBest
from .steering import CREwardCreativeKSampler, CREwardSteeringSampler

register_model_folders()

NODE_CLASS_MAPPINGS = {
    "CREwardLoader": CREwardLoader,
    "CREwardReferenceLoader": CREwardReferenceLoader,
    "CREwardScore": CREwardScore,
    "CREwardScoreLatent": CREwardScoreLatent,
    "CREwardSelectBest": CREwardSelectBest,
    "CREwardPlotScores": CREwardPlotScores,
    "CREwardExplain": CREwardExplain,
    "CREwardTrainCreativeLoRA": CREwardTrainCreativeLoRA,
    "CREwardCreativeLoRA": CREwardCreativeLoRA,
    "CREwardAcquireSamples": CREwardAcquireSamples,
    "CREwardCreativeKSampler": CREwardCreativeKSampler,
    "CREwardSteeringSampler": CREwardSteeringSampler,
    "CREwardGuidance": CREwardGuidance,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "CREwardLoader": "CREward Loader",
    "CREwardReferenceLoader": "CREward Reference Loader",
    "CREwardScore": "CREward Score",
    "CREwardScoreLatent": "CREward Score Latent",
    "CREwardSelectBest": "CREward Select Best",
    "CREwardPlotScores": "CREward Plot Scores",
    "CREwardExplain": "CREward Explain (Grad-CAM)",
    "CREwardTrainCreativeLoRA": "CREward Train Creative LoRA",
    "CREwardCreativeLoRA": "CREward Creative LoRA (axis sliders)",
    "CREwardAcquireSamples": "CREward Acquire Creative Samples",
    "CREwardCreativeKSampler": "CREward Creative KSampler (steered)",
    "CREwardSteeringSampler": "CREward Steering Sampler (FK / pruning)",
    "CREwardGuidance": "CREward Guidance (reward gradient)",
}
