"""Scripts run in a ComfyUI host's own Python (``python -c SCRIPT COMFY_ROOT ...``): its model
detection builds the model from a weights file, and its LoRA loader reports every key it could
not map. Each prints one JSON line: ``{"patched": N, "not_loaded": [...]}``;
:func:`assert_every_key_maps` runs one and checks it."""
import json
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

from comfy_server import host_env

# every script starts in the host's Python with its own command line set aside, and ends by
# loading the LoRA through ComfyUI's loader with its key map, reporting what it did not load
_START = r"""
import json, sys, logging
args = sys.argv[1:]
sys.argv = [sys.argv[0], "--cpu"]  # ComfyUI reads its own command line on import
sys.path.insert(0, args[0])
from safetensors.torch import load_file
import comfy.options
comfy.options.enable_args_parsing()
import comfy.model_detection, comfy.supported_models, comfy.lora, comfy.utils, comfy.ops
"""
_REPORT = r"""
missing = []
handler = logging.Handler()
handler.emit = lambda record: missing.append(record.getMessage())
logging.getLogger().addHandler(handler)
patches = comfy.lora.load_lora(load_file(args[2]), key_map)
print(json.dumps({"patched": len(patches), "not_loaded": [m for m in missing if "not loaded" in m]}))
"""

COMFY_SDXL_CHECK = _START + r"""
ldm = load_file(args[1])
unet_config = comfy.model_detection.detect_unet_config(ldm, "model.diffusion_model.")
model_config = comfy.supported_models.SDXL(unet_config)
model = model_config.get_model(ldm, "model.diffusion_model.")
key_map = comfy.lora.model_lora_keys_unet(model, {})
# ComfyUI's SDXL CLIP holds both encoders as clip_l / clip_g with transformers' names
class Clip:
    def __init__(self, keys): self.keys = keys
    def state_dict(self): return dict.fromkeys(self.keys)
te_keys = [("clip_l.transformer." if k.startswith("te1:") else "clip_g.transformer.") + k[4:] for k in json.loads(args[3])]
key_map = comfy.lora.model_lora_keys_clip(Clip(te_keys), key_map)
""" + _REPORT

COMFY_FLUX_CHECK = _START + r"""
sd = load_file(args[1])
unet_config = comfy.model_detection.detect_unet_config(sd, "model.diffusion_model.")
unet_config.update(json.loads(args[3]))  # detection assumes FLUX.1's 24 heads and rope axes
model = comfy.supported_models.Flux(unet_config).get_model(sd, "model.diffusion_model.")
key_map = comfy.lora.model_lora_keys_unet(model, {})
""" + _REPORT

COMFY_FLUX2_CHECK = _START + r"""
sd = load_file(args[1])
unet_config = comfy.model_detection.detect_unet_config(sd, "model.diffusion_model.")
assert unet_config["image_model"] == "flux2", unet_config
unet_config.update(json.loads(args[3]))  # detection assumes FLUX.2's 128-channel heads and rope axes
model = comfy.supported_models.Flux2(unet_config).get_model(sd, "model.diffusion_model.")
own = model.model_config.process_unet_state_dict({k[len("model.diffusion_model."):]: v for k, v in sd.items()})
model.diffusion_model.load_state_dict(own, strict=True)  # our BFL layout is what ComfyUI loads, key for key
key_map = comfy.lora.model_lora_keys_unet(model, {})
""" + _REPORT

COMFY_Z_IMAGE_CHECK = _START + r"""
sd = load_file(args[1])
extra = json.loads(args[3])
unet_config = comfy.model_detection.detect_unet_config(sd, "model.diffusion_model.")
unet_config.update(extra["config"])  # detection knows Z-Image by its published width only
model = comfy.supported_models.ZImage(unet_config).get_model(sd, "model.diffusion_model.")
hidden, out = extra["timestep_embedder"]
model.diffusion_model.t_embedder = type(model.diffusion_model.t_embedder)(
    hidden, output_size=out, operations=comfy.ops.disable_weight_init)
own = {k[len("model.diffusion_model."):]: v for k, v in sd.items()}
model.diffusion_model.load_state_dict(own, strict=True)  # our original layout is ComfyUI's, key for key
key_map = comfy.lora.model_lora_keys_unet(model, {})
""" + _REPORT

COMFY_QWEN_IMAGE_CHECK = _START + r"""
sd = load_file(args[1])
unet_config = comfy.model_detection.detect_unet_config(sd, "model.diffusion_model.")
assert unet_config["image_model"] == "qwen_image", unet_config
unet_config.update(json.loads(args[3]))  # detection reads depth and input width; the rest is Qwen-Image's size
model = comfy.supported_models.QwenImage(unet_config).get_model(sd, "model.diffusion_model.")
own = {k[len("model.diffusion_model."):]: v for k, v in sd.items()}
model.diffusion_model.load_state_dict(own, strict=True)  # diffusers' names are ComfyUI's, key for key
key_map = comfy.lora.model_lora_keys_unet(model, {})
""" + _REPORT


def assert_every_key_maps(comfy, script: str, model_file: Path, lora: Path, extra: object) -> None:
    """Run ``script`` in ``comfy``'s host on ``model_file`` and ``lora`` (``extra``: its JSON
    argument): every module of the LoRA is patched, no key is reported not loaded."""
    out = subprocess.run([sys.executable, "-c", script, str(comfy.root), str(model_file), str(lora),
                          json.dumps(extra)], capture_output=True, text=True, timeout=300, env=host_env(comfy.host))
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    n_modules = len([k for k in load_file(str(lora)) if k.endswith(".lora_up.weight")])
    assert report["not_loaded"] == [] and report["patched"] == n_modules, report
