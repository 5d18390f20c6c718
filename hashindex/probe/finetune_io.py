"""Files of a finetune run: its resumable checkpoint (adapters, HashCoder and optimiser state in
one safetensors file, replaced atomically) and what a finished run publishes (the adapter, the
probe, then ``adapter.json``, the mark of a finished run)."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from hashindex.backbone.augment import eval_view
from hashindex.backbone.frozen import Backbone
from hashindex.backbone.lora import ADAPTER_JSON, adapter_tensors, lora_layers, save_adapter
from hashindex.core.durable import write_durably
from hashindex.core.errors import InputError
from hashindex.probe.artifact import Probe, state_to_arrays
from hashindex.probe.fit import recalibrate_bits
from hashindex.probe.hashcoder import HashCoder

CHECKPOINT = "checkpoint.safetensors"
PROBE_DIR = "probe"


def checkpoint_tensors(head: HashCoder, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    t = {f"a.{k}": v for k, v in adapter_tensors(model).items()}
    t.update({f"h.{k}": v.detach().cpu().clone().contiguous() for k, v in head.state_dict().items()})
    for i, st in opt.state_dict()["state"].items():
        t.update({f"o.{i}.{k}": torch.as_tensor(v).detach().cpu().clone().contiguous() for k, v in st.items()})
    return t


def restore_checkpoint(
    t: dict[str, torch.Tensor], head: HashCoder, model: torch.nn.Module, opt: torch.optim.Optimizer, dev
) -> None:
    head.load_state_dict({k[2:]: v for k, v in t.items() if k.startswith("h.")})
    layers = lora_layers(model)
    for k, v in t.items():
        if k.startswith("a."):
            name, _, which = k[2:].rpartition(".")
            getattr(layers[name], which).data.copy_(v.to(dev))
    sd = opt.state_dict()
    state: dict[int, dict] = {}
    for k, v in t.items():
        if k.startswith("o."):
            _, i, key = k.split(".", 2)
            state.setdefault(int(i), {})[key] = v
    sd["state"] = state
    opt.load_state_dict(sd)


def write_bytes(path: Path, data: bytes) -> None:
    write_durably(path, lambda fh: fh.write(data))


def load_checkpoint(path: Path, settings: dict) -> tuple[dict, dict[str, torch.Tensor]] | None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            state = json.loads(fh.metadata()["state"])
        tensors = load_file(str(path))
    except Exception as e:  # a checkpoint is only ever replaced atomically: this is not ours
        raise InputError(f"{path} is unreadable ({type(e).__name__}): remove it to start afresh") from None
    if state["settings"] != settings:
        raise InputError(
            f"{path.parent} holds an unfinished finetune run with other settings: remove it or choose another OUT"
        )
    return state, tensors


def eval_features(backbone: Backbone, bases: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Eval-view features of uint8 base images ``(n, 3, S0, S0)``."""
    out = [
        backbone.features(eval_view(torch.from_numpy(bases[s : s + batch_size]).to(backbone.device), backbone.spec))
        .cpu()
        .numpy()
        for s in range(0, len(bases), batch_size)
    ]
    return np.concatenate(out).astype(np.float32)


def publish(
    out, source, config, settings, bb, head, bases, idx, trainable, backbone_params, history, seconds, book
) -> dict:
    """Write the adapter, then the probe, then ``adapter.json`` (the mark of a finished run); returns
    what ``adapter.json`` holds."""
    from hashindex.core.codes import bit_balance, pack

    sha = save_adapter(out, bb.model, config.lora, bb.spec, write=write_bytes)
    tuned = replace(bb.spec, adapter=str(out.resolve()), adapter_sha256=sha)
    x = eval_features(Backbone(bb.model, tuned, bb.device), bases)
    head = head.cpu()
    recalibrate_bits(head, x)  # centre the bits on the clean features that get indexed
    provenance = {
        "backbone": tuned.to_dict(),
        "augment": asdict(config.augment),
        "views": "2 per step, made on the fly",
        "seed": config.seed,
        "source": source.describe(),
        "n": len(idx),
        "dim": tuned.num_features,
    }
    fit = asdict(config.fit_config())
    meta = {
        "embeddings": provenance,
        "adapter": {"path": tuned.adapter, "sha256": sha},
        "loss_history": history,
        "fit_seconds": round(seconds, 3),
    }
    if book is not None:
        meta["codebook"] = book.to_meta()
    probe = Probe(
        "crovca", config.bits, tuned.num_features, {**fit, "finetune": True}, meta, state_to_arrays(head), head.eval()
    )
    bal = bit_balance(pack(probe.logits(x)))
    meta["bit_balance"] = {
        "mean": float(bal.mean()),
        "min": float(bal.min()),
        "max": float(bal.max()),
        "per_bit": [round(float(b), 4) for b in bal],
    }
    probe.save(out / PROBE_DIR)
    doc = {
        "format": 1,
        "lora": asdict(config.lora),
        "layers": sorted(lora_layers(bb.model)),
        "adapter_sha256": sha,
        "trainable_params": trainable,
        "backbone_params": backbone_params,
        "base": bb.spec.to_dict(),
        "backbone": tuned.to_dict(),
        "config": asdict(config),
        "source": source.describe(),
        "images": len(idx),
        "history": history,
        "seconds": round(seconds, 3),
        "probe": PROBE_DIR,
        "settings": settings,
    }
    write_bytes(out / ADAPTER_JSON, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())
    (out / CHECKPOINT).unlink(missing_ok=True)
    return doc
