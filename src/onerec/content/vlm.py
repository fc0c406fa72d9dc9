"""Multimodal backend: a Hugging Face vision-language model read from a local folder
(``content.backend=vlm``), the item encoder of the OneRec Technical Report (miniCPM-V there; Keye-VL
here, arXiv 2507.01949).

Each item becomes one chat turn: its cover image and ``content.frames`` frames sampled from its
video (or listed in its frames column), then a prompt built from its text fields (caption, tags,
ASR, OCR, ...). One forward pass with ``output_hidden_states``; the chosen layer's hidden states
over the whole turn (text and image tokens, padding excluded) are pooled into ``content.tokens``
contiguous segments: a few token vectors per item, which the alignment QFormer compresses.

Pointing it at real weights (nothing is downloaded at run time)::

    huggingface-cli download Qwen/Qwen2-VL-2B-Instruct --local-dir models/qwen2-vl-2b
    onerec tokenize RUN content.backend=vlm content.model_path=models/qwen2-vl-2b content.device=cuda \\
        content.dtype=bfloat16 content.align=true

Models: Qwen2-VL, Qwen2.5-VL, Qwen3-VL and MiniCPM-V 4.6 / 4.7 are built into transformers (>= 5)
and load without remote code. Keye-VL (Kwai-Keye/Keye-VL-8B-Preview), and MiniCPM-V snapshots older
than transformers' own support, ship their own modelling code (``auto_map`` in config.json): the
backend refuses such a folder with a ConfigError unless ``content.trust_remote_code=true``, which you
should set only after reading that code. Tested here end to end with tiny random models built from
configs: Qwen2-VL, Qwen2.5-VL, Qwen3-VL, MiniCPM-V 4.6, and the remote-code opt-in with a local
custom class; Keye-VL's own code has not been run.

Inputs: ``content.image_field`` (default ``cover``) holds an image path per item,
``content.frames_field`` a list of frame image paths, ``content.video_field`` a video path
(decoded with PyAV, or decord if PyAV is missing). Relative paths are resolved against
``content.media_root`` (the pipeline sets it to the run's data folder). Images are shrunk to fit
``content.image_size`` so the number of image tokens stays bounded.

The model's processor is used when it loads. Without torchvision, transformers cannot build these
processors (their video half needs it); the backend then uses the tokenizer and image processor
directly and expands each image placeholder as the family's processor does
(:func:`image_replacements`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from onerec.config import ContentConfig
from onerec.content.base import register
from onerec.content.text import folder_fingerprint, require_model_path, segment_pool
from onerec.errors import ConfigError, DataError

FIELD_LABELS = {"title": "Title", "text": "Caption", "tags": "Tags", "category": "Category", "asr": "Speech",
                "ocr": "On-screen text", "brand": "Brand", "description": "Description"}
PROMPT = "Describe this short video for a recommender: what it shows and who would enjoy it."


def sample_video_frames(path: str | Path, n: int) -> list[Any]:
    """``n`` frames evenly spaced over the video, as PIL images (PyAV, else decord)."""
    if n <= 0:
        return []
    try:
        import av
    except ImportError:
        av = None
    if av is not None:
        with av.open(str(path)) as container:
            frames = [f.to_image() for f in container.decode(video=0)]
    else:
        try:
            import decord
        except ImportError as e:
            raise ConfigError('decoding videos needs PyAV or decord. Fix: pip install "onerec[vlm]"') from e
        from PIL import Image

        vr = decord.VideoReader(str(path))
        idx = np.linspace(0, len(vr) - 1, n).round().astype(int)
        return [Image.fromarray(vr[int(i)].asnumpy()) for i in idx]
    if not frames:
        raise DataError("the video has no frames", path=str(path), fix="check the file or drop its video path")
    idx = np.linspace(0, len(frames) - 1, n).round().astype(int)
    return [frames[i] for i in idx]


def item_prompt(row: dict[str, Any], fields: list[str], max_chars: int) -> str:
    lines = []
    for f in fields:
        v = row.get(f)
        if v is None or v == "" or v == []:
            continue
        if isinstance(v, (list, tuple)):
            v = ", ".join(map(str, v))
        lines.append(f"{FIELD_LABELS.get(f, f.capitalize())}: {v}")
    return ("\n".join(lines)[:max_chars] + "\n" + PROMPT).strip()


def image_replacements(vision: Any, tokenizer: Any, image_processor: Any, image_token: str) -> list[str]:
    """The text each image placeholder of the prompt expands to (one entry per image, in order), as the
    family's own processor would write it; ``{image_id}`` stands for the image's index in its item.

    Qwen2-VL / Qwen2.5-VL / Qwen3-VL (``image_grid_thw``): ``prod(grid_thw) / merge_size**2`` image
    tokens. MiniCPM-V 4.6 / 4.7 (``target_sizes``): ``<image>`` + one token per 4 or 16 patches
    (``downsample_mode``) + ``</image>``, then one ``<slice>...</slice>`` per slice of a large image,
    rows separated by newlines, the whole prefixed with ``<image_id>k</image_id>`` when ``use_image_id``.
    """
    if "image_grid_thw" in vision:
        merge = int(getattr(image_processor, "merge_size", 1)) ** 2
        return [image_token * int(n) for n in (vision["image_grid_thw"].prod(dim=-1) // merge).tolist()]
    if "target_sizes" in vision:
        t = tokenizer
        divisor = 4 if getattr(image_processor, "downsample_mode", "16x") == "4x" else 16
        counts = (np.asarray(vision["target_sizes"]).prod(-1) // divisor).tolist()
        start, out = 0, []
        for (rows, cols), n_patches in zip(vision["grids"], vision["num_patches_per_image"], strict=True):
            n = counts[start:start + n_patches]
            start += n_patches
            text = t.image_start_token + image_token * int(n[0]) + t.image_end_token
            if rows > 0 and cols > 0:
                text += "\n".join("".join(t.slice_start_token + image_token * int(n[1 + r * cols + c]) +
                                           t.slice_end_token for c in range(cols)) for r in range(rows))
            if getattr(image_processor, "use_image_id", False):
                text = t.image_id_start_token + "{image_id}" + t.image_id_end_token + text
            out.append(text)
        return out
    raise ConfigError(f"onerec cannot build the image tokens of this model without its processor "
                      f"(image processor outputs {sorted(vision)}). Fix: install torchvision so that "
                      "transformers can build the model's processor")


class VLMBackend:
    name = "vlm"

    def __init__(self, cfg: ContentConfig) -> None:
        self.cfg = cfg
        self.path = require_model_path(cfg)
        self.batch_size = cfg.batch_size
        self._loaded: tuple[Any, ...] | None = None

    def fingerprint(self) -> str:
        c = self.cfg
        blob = json.dumps(["vlm-v1", str(self.path.resolve()), folder_fingerprint(self.path), c.tokens,
                           c.hidden_layer, c.text_fields, c.max_text_chars, c.image_field, c.video_field,
                           c.frames_field, c.frames, c.image_size, c.media_root, c.dtype])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    # ---------------------------------------------------------------- loading
    def load(self) -> tuple[Any, ...]:
        if self._loaded is not None:
            return self._loaded
        try:
            import torch
            import transformers as tf
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ConfigError('content.backend=vlm needs transformers. Fix: pip install "onerec[vlm]"') from e
        kw = {"local_files_only": True, "trust_remote_code": self.cfg.trust_remote_code}
        self._check_remote_code(tf)
        try:
            processor = tf.AutoProcessor.from_pretrained(self.path, **kw)
            if not hasattr(processor, "image_processor"):
                processor = None
        except (ImportError, AttributeError, ValueError, OSError, TypeError):
            processor = None  # e.g. no torchvision for the video processor: build inputs by hand below
        tokenizer = processor.tokenizer if processor is not None else tf.AutoTokenizer.from_pretrained(self.path, **kw)
        image_processor = processor.image_processor if processor is not None else \
            tf.AutoImageProcessor.from_pretrained(self.path, **kw)
        dtype = getattr(torch, self.cfg.dtype)
        model = None
        for auto in ("AutoModelForImageTextToText", "AutoModelForVision2Seq", "AutoModel"):
            cls = getattr(tf, auto, None)
            if cls is None:
                continue
            try:
                model = cls.from_pretrained(self.path, dtype=dtype, **kw)
                break
            except (ValueError, KeyError):
                continue
        if model is None:
            raise DataError("transformers found no vision-language model class for this folder", path=str(self.path),
                            fix="use a Qwen2-VL / Qwen2.5-VL folder, or set content.trust_remote_code=true for "
                                "models that ship their own code (Keye-VL, MiniCPM-V)")
        model = model.to(self.cfg.device).eval()
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._loaded = (processor, tokenizer, image_processor, model)
        return self._loaded

    def _check_remote_code(self, tf: Any) -> None:
        """A folder whose config maps to its own Python code (``auto_map``: Keye-VL, MiniCPM-V before
        transformers supported it) is loaded only with ``content.trust_remote_code=true``."""
        try:
            config = json.loads((self.path / "config.json").read_text())
        except (OSError, ValueError) as e:
            raise DataError("cannot read the model's config.json", path=str(self.path / "config.json"),
                            fix="point content.model_path at a Hugging Face model folder") from e
        native = config.get("model_type") in tf.models.auto.configuration_auto.CONFIG_MAPPING
        if config.get("auto_map") and not native and not self.cfg.trust_remote_code:
            files = sorted({str(v).split(".")[0] + ".py" for v in config["auto_map"].values() if isinstance(v, str)})
            raise ConfigError(f"the model folder {self.path} needs its own code ({', '.join(files)}; model_type "
                              f"'{config.get('model_type')}' is not built into transformers). Fix: read that code, "
                              "then set content.trust_remote_code=true to allow it to run")

    # ---------------------------------------------------------------- inputs
    def _resolve(self, p: str) -> Path:
        path = Path(p)
        if not path.is_absolute() and self.cfg.media_root:
            path = Path(self.cfg.media_root) / path
        return path

    def item_images(self, row: dict[str, Any], row_index: int) -> list[Any]:
        from PIL import Image

        paths: list[Path] = []
        images = []
        cover = row.get(self.cfg.image_field)
        if cover:
            paths.append(self._resolve(cover))
        frames = row.get(self.cfg.frames_field) or []
        if self.cfg.frames > 0 and frames:
            idx = np.linspace(0, len(frames) - 1, min(self.cfg.frames, len(frames))).round().astype(int)
            paths += [self._resolve(frames[i]) for i in idx]
        for p in paths:
            if not p.exists():
                raise DataError("image not found", path=str(p), row=row_index, column=self.cfg.image_field,
                                fix="fix the path or set content.media_root to the folder it is relative to")
            images.append(Image.open(p).convert("RGB"))
        video = row.get(self.cfg.video_field)
        if video and self.cfg.frames > 0 and not frames:
            vp = self._resolve(video)
            if not vp.exists():
                raise DataError("video not found", path=str(vp), row=row_index, column=self.cfg.video_field,
                                fix="fix the path or set content.media_root")
            images += [im.convert("RGB") for im in sample_video_frames(vp, self.cfg.frames)]
        s = self.cfg.image_size
        for im in images:
            im.thumbnail((s, s))
        return images

    def _inputs(self, texts: list[str], images: list[Any]) -> dict[str, Any]:
        processor, tokenizer, image_processor, _ = self.load()
        if processor is not None:
            return dict(processor(text=texts, images=images or None, return_tensors="pt", padding=True))
        out: dict[str, Any] = {}
        image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        if images:
            vision = image_processor(images=images, return_tensors="pt")
            out.update({k: vision[k] for k in image_processor.model_input_names if k in vision})
            replacements = iter(image_replacements(vision, tokenizer, image_processor, image_token))
            expanded = []
            for t in texts:
                parts = t.split(image_token)
                s = parts[0]
                for k, rest in enumerate(parts[1:]):
                    # a NUL placeholder, so the inserted image tokens are not re-split
                    s += next(replacements).replace(image_token, "\0").replace("{image_id}", str(k)) + rest
                expanded.append(s.replace("\0", image_token))
            texts = expanded
        enc = tokenizer(texts, return_tensors="pt", padding=True)
        out.update(enc)
        out["mm_token_type_ids"] = (enc["input_ids"] == tokenizer.convert_tokens_to_ids(image_token)).long()
        return out

    def encode_batch(self, items: pa.Table) -> np.ndarray:
        import torch

        processor, tokenizer, _, model = self.load()
        templater = processor if processor is not None and getattr(processor, "chat_template", None) else tokenizer
        rows = items.to_pylist()
        texts, images = [], []
        for r, row in enumerate(rows):
            ims = self.item_images(row, r)
            content = [{"type": "image"} for _ in ims]
            content.append({"type": "text", "text": item_prompt(row, self.cfg.text_fields, self.cfg.max_text_chars)})
            texts.append(templater.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                       add_generation_prompt=False))
            images += ims
        inputs = {k: (v.to(self.cfg.device) if hasattr(v, "to") else v) for k, v in self._inputs(texts, images).items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        with torch.no_grad():
            out = model(**inputs, output_hidden_states=True, return_dict=True)
        hidden = out.hidden_states[self.cfg.hidden_layer].float().cpu().numpy()
        mask = inputs["attention_mask"].cpu().numpy().astype(bool)
        return segment_pool(hidden, mask, max(1, self.cfg.tokens))


@register("vlm")
def _make(cfg: ContentConfig) -> VLMBackend:
    return VLMBackend(cfg)
